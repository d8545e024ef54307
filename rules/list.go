package rules

import (
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// namedList is one of the app's lists as a CEL value: a CEL list of
// strings that also keeps its entries in a set, so that `x in lists.name`
// is one lookup rather than a walk through the list. A list of ten thousand
// domains then costs a membership test what a list of four does, and the
// cost estimate counts it so (see sizes.EstimateCallCost).
type namedList struct {
	traits.Lister
	set map[string]struct{}
}

func newNamedList(entries []string) *namedList {
	vals := make([]ref.Val, len(entries))
	set := make(map[string]struct{}, len(entries))
	for i, e := range entries {
		vals[i] = types.String(e)
		set[e] = struct{}{}
	}
	return &namedList{Lister: types.NewRefValList(types.DefaultTypeAdapter, vals), set: set}
}

// Contains implements traits.Container with a set lookup. Anything but a
// string is in no list (CEL's equality never holds between a string and
// another type), which the list itself answers.
func (l *namedList) Contains(v ref.Val) ref.Val {
	s, ok := v.(types.String)
	if !ok {
		return l.Lister.Contains(v)
	}
	_, found := l.set[string(s)]
	return types.Bool(found)
}

// Interface guards
var _ traits.Lister = (*namedList)(nil)
