package parity_test

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/manifest"
)

// benchObjects makes a large namespace: n objects, a quarter each
// Deployments (two containers, env, resources, probes, volumes), Services,
// ConfigMaps and Secrets, as a live side reads them. drift changes one
// object in twenty, as the other side of a comparison.
func benchObjects(n int, ns string, drift bool) []map[string]any {
	objs := make([]map[string]any, 0, n)
	for i := 0; len(objs) < n; i++ {
		name := fmt.Sprintf("svc-%04d", i)
		changed := drift && i%20 == 0
		image := "registry.example.com/team/" + name + ":1.4.2"
		mem := "512Mi"
		if changed {
			image = "registry.example.com/team/" + name + ":1.5.0"
			mem = "1Gi"
		}
		env := []any{}
		for e := 0; e < 12; e++ {
			env = append(env, map[string]any{"name": fmt.Sprintf("VAR_%02d", e), "value": fmt.Sprintf("http://dep-%d.%s.svc.cluster.local:8080", e, ns)})
		}
		env = append(env, map[string]any{"name": "DB_PASSWORD", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": name, "key": "password"}}})
		probe := map[string]any{"httpGet": map[string]any{"path": "/healthz", "port": int64(8080), "scheme": "HTTP"},
			"periodSeconds": int64(10), "timeoutSeconds": int64(1), "successThreshold": int64(1), "failureThreshold": int64(3)}
		meta := func() map[string]any {
			return map[string]any{"name": name, "namespace": ns, "uid": fmt.Sprintf("uid-%s-%d", ns, i),
				"resourceVersion": fmt.Sprint(1000 + i), "labels": map[string]any{"app": name, "team": "shop"},
				"managedFields": []any{map[string]any{"manager": "kubectl", "operation": "Apply"}}}
		}
		objs = append(objs, map[string]any{
			"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(),
			"spec": map[string]any{
				"replicas": int64(3), "revisionHistoryLimit": int64(10),
				"selector": map[string]any{"matchLabels": map[string]any{"app": name}},
				"template": map[string]any{
					"metadata": map[string]any{"labels": map[string]any{"app": name}},
					"spec": map[string]any{
						"dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
						"volumes": []any{map[string]any{"name": "config", "configMap": map[string]any{"name": name, "defaultMode": int64(420)}}},
						"containers": []any{
							map[string]any{"name": "app", "image": image, "args": []any{"--port=8080", "--log=json"},
								"env":            env,
								"ports":          []any{map[string]any{"containerPort": int64(8080), "protocol": "TCP", "name": "http"}},
								"resources":      map[string]any{"requests": map[string]any{"cpu": "250m", "memory": "256Mi"}, "limits": map[string]any{"memory": mem}},
								"readinessProbe": probe, "livenessProbe": probe,
								"volumeMounts":           []any{map[string]any{"name": "config", "mountPath": "/etc/app"}},
								"terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"},
							map[string]any{"name": "proxy", "image": "envoyproxy/envoy:v1.31.0", "ports": []any{map[string]any{"containerPort": int64(15001)}}},
						},
					},
				},
			},
			"status": map[string]any{"replicas": int64(3), "readyReplicas": int64(3)},
		}, map[string]any{
			"apiVersion": "v1", "kind": "Service", "metadata": meta(),
			"spec": map[string]any{"selector": map[string]any{"app": name}, "clusterIP": fmt.Sprintf("10.0.%d.%d", i/250, i%250),
				"ports": []any{map[string]any{"name": "http", "port": int64(80), "targetPort": int64(8080), "protocol": "TCP"}}},
		}, map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(),
			"data": map[string]any{"app.yaml": fmt.Sprintf("listen: 8080\nupstream: dep.%s.svc\nretries: %d\n", ns, 3+btoi(changed)), "LOG_LEVEL": "info"},
		}, map[string]any{
			"apiVersion": "v1", "kind": "Secret", "metadata": meta(), "type": "Opaque",
			"data": map[string]any{"password": "cGFzc3dvcmQtb2YtdGhlLXNlcnZpY2U=", "token": "dG9rZW4="},
		})
	}
	return objs[:n]
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// BenchmarkDiff2000 normalizes two sides of 2,000 objects each, as a live
// read hands them over, and diffs them: the work of `detour parity diff`
// between two namespaces once the API has answered. docs/performance.md,
// "Parity", has the numbers measured here.
func BenchmarkDiff2000(b *testing.B) {
	left, right := benchObjects(2000, "staging", false), benchObjects(2000, "production", true)
	fp, err := parity.NewFingerprinter(testKey)
	if err != nil {
		b.Fatal(err)
	}
	run := func() *parity.Report {
		ls, err := parity.Normalize(left, parity.Options{Namespace: "staging", Fingerprint: fp})
		if err != nil {
			b.Fatal(err)
		}
		rs, err := parity.Normalize(right, parity.Options{Namespace: "production", Fingerprint: fp})
		if err != nil {
			b.Fatal(err)
		}
		r, err := parity.Diff(ls, rs, parity.DiffOptions{})
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	if r := run(); r.Summary.Total != 3*25 {
		// 25 changed services (one in twenty): image, memory limit, a ConfigMap value.
		b.Fatalf("%d differences, want 75", r.Summary.Total)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		run()
	}
	b.StopTimer()
	reportMemory(b, run)
}

// BenchmarkManifests2000 is the same from two YAML streams of 2,000
// objects: decoding included, as for two manifest directories.
func BenchmarkManifests2000(b *testing.B) {
	stream := func(objs []map[string]any) []byte {
		var buf bytes.Buffer
		for _, o := range objs {
			y, err := yaml.Marshal(o)
			if err != nil {
				b.Fatal(err)
			}
			buf.Write(y)
			buf.WriteString("---\n")
		}
		return buf.Bytes()
	}
	left, right := stream(benchObjects(2000, "staging", false)), stream(benchObjects(2000, "production", true))
	b.SetBytes(int64(len(left) + len(right)))
	run := func() *parity.Report {
		var snaps []*parity.Snapshot
		for _, s := range [][]byte{left, right} {
			objs, err := manifest.Decode(s, "bench")
			if err != nil {
				b.Fatal(err)
			}
			snap, err := parity.Normalize(objs, parity.Options{})
			if err != nil {
				b.Fatal(err)
			}
			snaps = append(snaps, snap)
		}
		r, err := parity.Diff(snaps[0], snaps[1], parity.DiffOptions{})
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		run()
	}
	b.StopTimer()
	reportMemory(b, run)
}

// reportMemory runs once more alone and reports the heap at its highest
// point that a sampler can see (peak-heap-MiB, HeapAlloc sampled every
// 200 µs: an underestimate by at most what is allocated between samples)
// and all that the run allocated (total-alloc-MiB, a bound on any peak).
func reportMemory(b *testing.B, run func() *parity.Report) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	peak := before.HeapAlloc
	done := make(chan struct{})
	sampled := make(chan uint64)
	go func() {
		var ms runtime.MemStats
		max := uint64(0)
		for {
			select {
			case <-done:
				sampled <- max
				return
			default:
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > max {
				max = ms.HeapAlloc
			}
			sleepMicro(200)
		}
	}()
	r := run()
	close(done)
	if p := <-sampled; p > peak {
		peak = p
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(r)
	const mib = 1 << 20
	b.ReportMetric(float64(peak)/mib, "peak-heap-MiB")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/mib, "total-alloc-MiB")
}

func sleepMicro(n int) { time.Sleep(time.Duration(n) * time.Microsecond) }
