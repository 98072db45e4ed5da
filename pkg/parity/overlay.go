package parity

// Overlay is an environment as it runs, from a snapshot of its baseline
// namespace: each fork's fields replace those of the workload it forks,
// under the workload's name, and the forks themselves are not objects of
// the view. forks maps each fork to the workload it forks; a fork mapped to
// the zero ObjectKey (another environment's) is only dropped. base is not
// changed.
func Overlay(base *Snapshot, forks map[ObjectKey]ObjectKey, source string) *Snapshot {
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
			o = Object{Kind: o.Kind, Name: o.Name, Fields: f.Fields, Elements: f.Elements}
		}
		out.Objects = append(out.Objects, o)
	}
	return &out
}
