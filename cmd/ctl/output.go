package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apiconv"
)

// Output formats of -o.
const (
	outTable = "table"
	outJSON  = "json"
	outYAML  = "yaml"
)

// checkOutputFlag refuses an unknown -o before anything is sent.
func checkOutputFlag(g *globals) error {
	switch g.output {
	case outTable, outJSON, outYAML:
		return nil
	}
	return usageErrorf("unknown output format %q (-o): want table, json or yaml", g.output)
}

// printMessage writes m as JSON or YAML. Field names are the proto's own
// (snake_case), and unset fields are written too, so scripts see the same
// shape every time. protojson's whitespace is deliberately unstable, so the
// JSON is re-indented here.
func printMessage(w io.Writer, format string, m proto.Message) error {
	raw, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	b.WriteByte('\n')
	if format == outYAML {
		y, err := yaml.JSONToYAML(b.Bytes())
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		_, err = w.Write(y)
		return err
	}
	_, err = w.Write(b.Bytes())
	return err
}

// printIntercepts writes the intercept table.
func printIntercepts(w io.Writer, ics []*detourv1.Intercept, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tSERVICE\tPORT\tMATCH\tDESTINATION\tEXPIRES\tAGE")
	for _, ic := range ics {
		s := ic.GetSpec()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n",
			ic.GetNamespace(), ic.GetName(), s.GetServiceName(), s.GetPort(),
			apiconv.DescribeSpec(s), apiconv.DescribeDestination(s),
			expiresIn(ic, now), ageOf(ic.GetCreatedAt().AsTime(), now))
	}
	return tw.Flush()
}

// expiresIn says when the lease ends, relative to now.
func expiresIn(ic *detourv1.Intercept, now time.Time) string {
	if ic.GetExpiresAt() == nil {
		if o := ic.GetOwner(); o != nil {
			return "with " + strings.ToLower(o.GetKind()) + " " + o.GetName()
		}
		return "never"
	}
	d := ic.GetExpiresAt().AsTime().Sub(now)
	if d <= 0 {
		return "expired"
	}
	return "in " + shortDuration(d)
}

// ageOf is how long ago t was, kubectl style.
func ageOf(t, now time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return "-"
	}
	return shortDuration(now.Sub(t))
}

// shortDuration renders a duration in its two largest units: 45s, 3m20s, 2h5m, 3d4h.
func shortDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	sec := int64(d.Round(time.Second) / time.Second)
	switch {
	case sec < 60:
		return fmt.Sprintf("%ds", sec)
	case sec < 3600:
		return twoUnits(sec/60, "m", sec%60, "s")
	case sec < 48*3600:
		return twoUnits(sec/3600, "h", sec%3600/60, "m")
	}
	return twoUnits(sec/86400, "d", sec%86400/3600, "h")
}

// twoUnits writes "3m20s", or "3m" when the smaller unit is zero.
func twoUnits(a int64, ua string, b int64, ub string) string {
	if b == 0 {
		return fmt.Sprintf("%d%s", a, ua)
	}
	return fmt.Sprintf("%d%s%d%s", a, ua, b, ub)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// printStatus writes the status tables.
func printStatus(w io.Writer, addr string, st *detourv1.GetStatusResponse, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	started := st.GetControllerStarted().AsTime()
	fmt.Fprintf(tw, "CONTROLLER\tVERSION\tUP SINCE\n")
	fmt.Fprintf(tw, "%s\t%s\t%s (%s)\n", addr, st.GetControllerVersion(), started.Local().Format(time.RFC3339), shortDuration(now.Sub(started)))
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tCONNECTED\tVERSION\tLAST SEEN")
	if len(st.GetAgents()) == 0 {
		fmt.Fprintln(tw, "(no agents)\t\t\t")
	}
	for _, a := range st.GetAgents() {
		seen := "never"
		if a.GetLastSeen() != nil {
			seen = shortDuration(now.Sub(a.GetLastSeen().AsTime())) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.GetNode(), yesNo(a.GetConnected()), a.GetVersion(), seen)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tNODE\tSTEERING\tMATCHED\tFALLBACKS\tSTEERED CONNS\tERROR")
	if len(st.GetIntercepts()) == 0 {
		fmt.Fprintln(tw, "(no intercepts)\t\t\t\t\t\t\t")
	}
	for _, ic := range st.GetIntercepts() {
		if len(ic.GetNodes()) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\tno\t0\t0\t0\t\n", ic.GetNamespace(), ic.GetName())
			continue
		}
		for _, n := range ic.GetNodes() {
			steering := "no"
			if n.GetSteeringAttached() {
				steering = "attached"
			}
			node := n.GetNode()
			if node == "" {
				node = "-" // the intercept targets no node; Error says why
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", ic.GetNamespace(), ic.GetName(), node,
				steering, n.GetMatched(), n.GetFallbacks(), n.GetSteeredConnections(), n.GetError())
		}
	}
	return tw.Flush()
}
