package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/detourdev/detour/pkg/lab"
)

const labExample = `name: demo              # the lab's name
node: lab               # node name in the inventory (default: lab)
network:                # optional; these are the defaults
  bridge: detour0       # bridge in the node's namespace, like cni0
  subnet: 10.213.0.0/24 # bridge takes .1; pods get .2, .3, ... in file order
pods:
  - name: api           # also the netns name: ip netns exec api CMD
    namespace: default  # optional
    labels: {app: api}
    command: ["detour-echo", "--listen", ":8080"]
  - name: client
    command: ["sleep", "infinity"]   # optional: a pod may run nothing
services:
  - name: api           # resolves (hosts file) to the IPs of the pods it selects
    selector: {app: api}
    ports: [{port: 80, targetPort: 8080}]`

func newLabCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a simulated Kubernetes node on this machine (needs root)",
		Long: `The lab simulates one Kubernetes node on the local kernel. Each pod is a
real named network namespace with an eth0 wired by a veth pair to a bridge in
the node's namespace, and runs its command inside that namespace. Enter any
pod with "ip netns exec POD CMD" to run real clients and servers there.

Inside a pod, /etc/hosts maps every pod name and every service name
(name, name.namespace, name.namespace.svc) to addresses. The lab has no
ClusterIP and no load balancing: a service name resolves straight to the IPs
of the pods it selects, and clients connect to the pods' target port.

The lab writes the node's inventory (pods, IPs, namespaces, services) to
STATE-DIR/inventory.json and records everything it creates in
STATE-DIR/state.json; "lab down" removes exactly that. Pod output goes to
STATE-DIR/logs/POD.log.

Lab file:

` + labExample,
	}
	cmd.AddCommand(newLabUpCmd(g), newLabDownCmd(), newLabStatusCmd(g))
	return cmd
}

func addStateDirFlag(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "state-dir", lab.DefaultStateDir, "directory of the lab's state, inventory and logs")
}

func newLabUpCmd(g *globals) *cobra.Command {
	var (
		file     string
		stateDir string
		binDirs  []string
	)
	cmd := &cobra.Command{
		Use:   "up -f FILE",
		Short: "Bring up the lab described by FILE",
		Long: `Bring up the lab described by FILE: the bridge, one network namespace, veth
and hosts file per pod, then each pod's command, detached, with
DETOUR_POD_NAME, DETOUR_POD_NAMESPACE, DETOUR_POD_IP and DETOUR_NODE_NAME set.
Pod commands are looked up in the --bin-dir directories, then $PATH.

If any step fails, everything made so far is removed again. Up refuses
(exit 4) when the state dir already holds a lab or a pod's network namespace
already exists. An invalid FILE exits 2 with every problem listed.

Example FILE:

` + labExample,
		Example: `  sudo detour lab up -f test/lab/demo.yaml
  sudo ip netns exec client curl -s http://api:8080/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageErrorf("lab up needs -f FILE")
			}
			if err := checkOutput(g.output); err != nil {
				return err
			}
			f, err := lab.Load(file)
			if err != nil {
				return withCode(exitUsage, err)
			}
			if !cmd.Flags().Changed("bin-dir") {
				binDirs = defaultBinDirs()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			st, err := lab.Up(ctx, f, lab.Options{
				StateDir:    stateDir,
				PathPrepend: binDirs,
				Progress:    cmd.ErrOrStderr(),
			})
			if errors.Is(err, lab.ErrConflict) {
				return withCode(exitRefused, err)
			}
			if err != nil {
				return err
			}
			return printLab(cmd.OutOrStdout(), g.output, st, false)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "lab file (YAML)")
	addStateDirFlag(cmd, &stateDir)
	cmd.Flags().StringSliceVar(&binDirs, "bin-dir", nil, "directories searched before $PATH for pod commands (default: the directory of this detour binary)")
	return cmd
}

// defaultBinDirs puts the directory of the running detour first, so the
// detour-echo that `make build` puts beside it is found without PATH edits.
func defaultBinDirs() []string {
	exe, err := os.Executable()
	if err != nil {
		return nil
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return []string{filepath.Dir(exe)}
}

func newLabDownCmd() *cobra.Command {
	var stateDir string
	return withStateDir(&cobra.Command{
		Use:   "down",
		Short: "Remove the lab recorded in the state dir",
		Long: `Remove what "lab up" made, as recorded in STATE-DIR/state.json, and nothing
else: stop each pod's process group (SIGTERM, then SIGKILL after 5s), delete
the veths, network namespaces and /etc/netns/POD dirs, the bridge if the lab
created it, and the state files. Running it again, or with no lab up, does
nothing and succeeds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// An interrupted down leaves state.json whole (it is rewritten
			// only at the end), so running it again finishes the job.
			return lab.DownWith(cmd.Context(), lab.Options{
				StateDir: stateDir,
				Progress: cmd.ErrOrStderr(),
			})
		},
	}, &stateDir)
}

func withStateDir(cmd *cobra.Command, dir *string) *cobra.Command {
	addStateDirFlag(cmd, dir)
	return cmd
}

func newLabStatusCmd(g *globals) *cobra.Command {
	var stateDir string
	return withStateDir(&cobra.Command{
		Use:   "status",
		Short: "Show the lab's pods and whether their commands run",
		Long: `Show the lab recorded in the state dir: its pods, their IPs and network
namespaces, and whether each pod's command is still running (see
STATE-DIR/logs/POD.log if not). Exits 3 if no lab is up.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.LoadState(stateDir)
			if errors.Is(err, lab.ErrNotUp) {
				return withCode(exitNotFound, err)
			}
			if err != nil {
				return err
			}
			return printLab(cmd.OutOrStdout(), g.output, st, true)
		},
	}, &stateDir)
}

// podView is one row of the pod table, also the JSON/YAML shape.
type podView struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	IP        string `json:"ip"`
	NetNS     string `json:"netns"`
	PID       int    `json:"pid,omitempty"`
	Status    string `json:"status"`
	Log       string `json:"log,omitempty"`
}

type labView struct {
	Lab       string    `json:"lab"`
	Node      string    `json:"node"`
	Bridge    string    `json:"bridge"`
	Gateway   string    `json:"gateway"`
	Inventory string    `json:"inventory,omitempty"`
	Pods      []podView `json:"pods"`
}

func viewOf(st *lab.State) labView {
	v := labView{Lab: st.Lab, Node: st.Node, Bridge: st.Bridge, Gateway: st.BridgeAddr, Inventory: st.Inventory, Pods: []podView{}}
	for _, p := range st.Pods {
		status := "no command"
		switch {
		case p.PID > 0 && p.Running():
			status = "running"
		case p.PID > 0:
			status = "exited"
		case len(p.Command) > 0:
			status = "not started"
		}
		v.Pods = append(v.Pods, podView{Name: p.Name, Namespace: p.Namespace, IP: p.IP, NetNS: p.NetNS, PID: p.PID, Status: status, Log: p.Log})
	}
	return v
}

func checkOutput(format string) error {
	switch format {
	case "table", "json", "yaml":
		return nil
	}
	return usageErrorf("unknown output format %q (want table, json or yaml)", format)
}

func printLab(w io.Writer, format string, st *lab.State, withStatus bool) error {
	v := viewOf(st)
	switch format {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	if err := checkOutput(format); err != nil {
		return err
	}
	fmt.Fprintf(w, "lab %s: node %s, bridge %s %s\n", v.Lab, v.Node, v.Bridge, v.Gateway)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if withStatus {
		fmt.Fprintln(tw, "NAME\tNAMESPACE\tIP\tNETNS\tPID\tSTATUS")
	} else {
		fmt.Fprintln(tw, "NAME\tNAMESPACE\tIP\tNETNS\tPID")
	}
	for _, p := range v.Pods {
		pid := "-"
		if p.PID > 0 {
			pid = strconv.Itoa(p.PID)
		}
		if withStatus {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Namespace, p.IP, p.NetNS, pid, p.Status)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, p.Namespace, p.IP, p.NetNS, pid)
		}
	}
	return tw.Flush()
}
