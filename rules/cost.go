package rules

import (
	"math"
	"unicode/utf8"

	"cel.dev/cel-go/checker"
	"cel.dev/cel-go/common"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"
)

// CEL counts what an evaluation costs in abstract units: about one per
// operation (reading a variable, a comparison, one turn of a macro's loop)
// and one per ten characters a string operation walks or builds. Measured
// on a loaded 2-core machine, a unit of a loop is about 25 ns of CPU, or
// about 115 ns while the cost is counted as it runs.
const (
	// MaxCost is the largest cost a condition may have: estimated in the
	// worst case when the config loads, where a condition over it is
	// refused, and counted as it runs, where an evaluation that goes past it
	// is stopped with an error. It is between a quarter of a millisecond
	// and a millisecond of CPU.
	MaxCost = 10_000

	// MaxStringSize is the length, in characters, that the cost estimate
	// assumes for a string variable: the longest path RFC 5321 allows (256
	// octets); host names are at most 255, the other strings shorter. A
	// longer value is not refused; an evaluation whose cost grows with it
	// is held to MaxCost as it runs.
	MaxStringSize = 256
)

// sizes tells CEL's cost estimate how big the variables can be (the lists
// as they are configured, a string variable up to strings characters, or
// of any size if strings is 0), and counts a membership test in one of the
// app's lists as one lookup. It is also the cost function of an evaluation
// that is limited as it runs.
type sizes struct {
	named   map[string]listSize // each list by name
	all     listSize            // the longest list, and the longest entry of any
	nameLen uint64              // the longest list name
	strings uint64              // a string variable's size; 0 for any size
}

// listSize is a list's number of entries and its longest entry.
type listSize struct{ entries, entryLen uint64 }

func listSizes(lists map[string][]string) sizes {
	s := sizes{named: make(map[string]listSize, len(lists)), strings: MaxStringSize}
	for name, entries := range lists {
		l := listSize{entries: uint64(len(entries))}
		for _, e := range entries {
			l.entryLen = max(l.entryLen, uint64(utf8.RuneCountInString(e)))
		}
		s.named[name] = l
		s.all = listSize{max(s.all.entries, l.entries), max(s.all.entryLen, l.entryLen)}
		s.nameLen = max(s.nameLen, uint64(utf8.RuneCountInString(name)))
	}
	return s
}

// EstimateSize implements checker.CostEstimator. A node's path is the
// variable it reads and the steps into it: ["lists"], ["lists", "domains"]
// (["lists", "@values"] for lists[...] or any of the lists),
// ["lists", "domains", "@items"] for an entry, ["rcpt"] for a string
// variable.
func (s sizes) EstimateSize(n checker.AstNode) *checker.SizeEstimate {
	path := n.Path()
	if len(path) == 0 {
		return nil
	}
	upTo := func(v uint64) *checker.SizeEstimate { return &checker.SizeEstimate{Min: 0, Max: v} }
	if path[0] == varLists {
		if len(path) == 1 {
			return upTo(uint64(len(s.named)))
		}
		if path[1] == "@keys" {
			return upTo(s.nameLen)
		}
		// A name that is no list is refused, or fails as it runs: any
		// size will do.
		l, ok := s.named[path[1]]
		if !ok {
			l = s.all
		}
		switch {
		case len(path) == 2:
			return upTo(l.entries)
		case len(path) == 3 && path[2] == "@items":
			return upTo(l.entryLen)
		}
		return nil
	}
	if len(path) == 1 && s.strings > 0 && n.Type() != nil && n.Type().Kind() == types.StringKind {
		return upTo(s.strings)
	}
	return nil
}

// isNamedList reports whether n is one of the app's lists: lists.domains,
// lists["domains"], or a macro's variable going over lists' values.
func isNamedList(n checker.AstNode) bool {
	path := n.Path()
	return len(path) == 2 && path[0] == varLists && path[1] != "@keys"
}

// EstimateCallCost implements checker.CostEstimator: a membership test in
// one of the app's lists is a set lookup, one unit; the rest of CEL's
// standard functions, the only ones in the environment, are CEL's to
// estimate.
func (sizes) EstimateCallCost(_, overloadID string, _ *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	if overloadID == overloads.InList && len(args) == 2 && isNamedList(args[1]) {
		return &checker.CallEstimate{CostEstimate: checker.FixedCostEstimate(1)}
	}
	return nil
}

// CallCost implements interpreter.ActualCostEstimator, for the evaluations
// whose cost is counted as they run. It counts what CEL counts, but from a
// string's length in bytes (at least its length in characters), which is
// known at once where CEL counts the characters, walking the string at
// every comparison; and a membership test in one of the app's lists as one
// lookup.
func (sizes) CallCost(_, overloadID string, args []ref.Val, _ ref.Val) *uint64 {
	var c uint64
	switch overloadID {
	case overloads.InList:
		if len(args) != 2 {
			return nil
		}
		if _, ok := args[1].(*namedList); !ok {
			return nil
		}
		c = 1
	case overloads.StartsWithString, overloads.EndsWithString:
		b, ok := byteLens(args)
		if !ok {
			return nil
		}
		c = traversal(b[1])
	case overloads.LessString, overloads.GreaterString, overloads.LessEqualsString, overloads.GreaterEqualsString,
		overloads.Equals, overloads.NotEquals:
		b, ok := byteLens(args)
		if !ok {
			return nil
		}
		c = traversal(min(b[0], b[1]))
	case overloads.AddString:
		b, ok := byteLens(args)
		if !ok {
			return nil
		}
		c = traversal(b[0] + b[1])
	case overloads.Matches, overloads.MatchesString:
		b, ok := byteLens(args)
		if !ok {
			return nil
		}
		c = traversal(b[0]+1) * uint64(math.Ceil(float64(b[1])*common.RegexStringLengthCostFactor))
	case overloads.ContainsString:
		b, ok := byteLens(args)
		if !ok {
			return nil
		}
		c = traversal(b[0]) * traversal(b[1])
	default:
		return nil
	}
	return &c
}

// byteLens returns the lengths of two string arguments.
func byteLens(args []ref.Val) ([2]uint64, bool) {
	if len(args) != 2 {
		return [2]uint64{}, false
	}
	a, ok1 := args[0].(types.String)
	b, ok2 := args[1].(types.String)
	return [2]uint64{uint64(len(a)), uint64(len(b))}, ok1 && ok2
}

// traversal is the cost of walking n characters, as CEL counts it.
func traversal(n uint64) uint64 {
	return uint64(math.Ceil(float64(n) * common.StringTraversalCostFactor))
}

// listsNamed returns the names of the lists that expr reads with a constant
// name (lists.domains, lists["domains"]), in order, so that a name that is
// not a configured list is found when the config loads. A presence test
// (has(lists.domains)) is not a read.
func listsNamed(expr ast.Expr) []string {
	var names []string
	var walk func(e ast.Expr, shadowed bool)
	isLists := func(e ast.Expr, shadowed bool) bool {
		return !shadowed && e.Kind() == ast.IdentKind && e.AsIdent() == varLists
	}
	walk = func(e ast.Expr, shadowed bool) {
		switch e.Kind() {
		case ast.SelectKind:
			sel := e.AsSelect()
			if !sel.IsTestOnly() && isLists(sel.Operand(), shadowed) {
				names = append(names, sel.FieldName())
			}
			walk(sel.Operand(), shadowed)
		case ast.CallKind:
			call := e.AsCall()
			args := call.Args()
			if call.FunctionName() == operators.Index && len(args) == 2 && isLists(args[0], shadowed) &&
				args[1].Kind() == ast.LiteralKind {
				if name, ok := args[1].AsLiteral().(types.String); ok {
					names = append(names, string(name))
				}
			}
			if call.IsMemberFunction() {
				walk(call.Target(), shadowed)
			}
			for _, a := range args {
				walk(a, shadowed)
			}
		case ast.ListKind:
			for _, el := range e.AsList().Elements() {
				walk(el, shadowed)
			}
		case ast.MapKind:
			for _, en := range e.AsMap().Entries() {
				walk(en.AsMapEntry().Key(), shadowed)
				walk(en.AsMapEntry().Value(), shadowed)
			}
		case ast.ComprehensionKind:
			// A macro's own variables may be named lists: inside the loop
			// the name is theirs, not the app's lists.
			c := e.AsComprehension()
			walk(c.IterRange(), shadowed)
			walk(c.AccuInit(), shadowed)
			accu := shadowed || c.AccuVar() == varLists
			inLoop := accu || c.IterVar() == varLists || (c.HasIterVar2() && c.IterVar2() == varLists)
			walk(c.LoopCondition(), inLoop)
			walk(c.LoopStep(), inLoop)
			walk(c.Result(), accu)
		}
	}
	walk(expr, false)
	return names
}

// Interface guards
var (
	_ checker.CostEstimator           = sizes{}
	_ interpreter.ActualCostEstimator = sizes{}
)
