package parity

// Overlay is an environment as it runs, from a snapshot of its baseline
// namespace: each fork's fields replace those of the workload it forks,
// under the workload's name, and the forks themselves are not objects of
// the view. forks maps each fork to the workload it forks; a fork mapped to
// the zero ObjectKey (another environment's) is only dropped. keep are path
// patterns (as in MatchPath) whose fields stay the workload's own: what
// made the fork a separate object (its labels, its selector, variables
// naming its environment) is not what the environment changes. base is not
// changed.
func Overlay(base *Snapshot, forks map[ObjectKey]ObjectKey, source string, keep ...string) *Snapshot {
	out := *base
	out.Source = source
	out.Objects = make([]Object, 0, len(base.Objects))
	replaced := map[ObjectKey]*Object{}
	for i := range base.Objects {
		o := &base.Objects[i]
		if target, ok := forks[o.Key()]; ok && target != (ObjectKey{}) {
			replaced[target] = o
		}
	}
	for _, o := range base.Objects {
		if _, isFork := forks[o.Key()]; isFork {
			continue
		}
		if f, ok := replaced[o.Key()]; ok {
			o = Object{Kind: o.Kind, Name: o.Name,
				Fields: mergeKept(f.Fields, o.Fields, keep), Elements: mergeKept(f.Elements, o.Elements, keep)}
		}
		out.Objects = append(out.Objects, o)
	}
	return &out
}

// mergeKept is fork's entries, except that those under a keep pattern are
// own's.
func mergeKept(fork, own map[string]string, keep []string) map[string]string {
	if len(keep) == 0 {
		return fork
	}
	kept := func(p string) bool {
		for _, k := range keep {
			if MatchPath(k, p) {
				return true
			}
		}
		return false
	}
	out := make(map[string]string, len(fork))
	for p, v := range fork {
		if !kept(p) {
			out[p] = v
		}
	}
	for p, v := range own {
		if kept(p) {
			out[p] = v
		}
	}
	return out
}
