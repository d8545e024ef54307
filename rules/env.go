package rules

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"
)

// Env is the CEL environment of one configuration: the declared variables
// and the app's named lists. One Env compiles every rule of a config.
type Env struct {
	cel   *cel.Env
	lists map[string][]string
	// globals is the lists as one CEL value, given to every program.
	globals map[string]any
	// sizes are the variables' sizes for the cost estimate.
	sizes sizes
}

// NewEnv returns the environment for a configuration whose named lists are
// lists (name -> entries). Lists are constant for the life of the config.
func NewEnv(lists map[string][]string) (*Env, error) {
	env, err := cel.NewEnv(
		cel.Variable(varRetryNum, cel.IntType),
		cel.Variable(varSender, cel.StringType),
		cel.Variable(varSenderDomain, cel.StringType),
		cel.Variable(varRcpt, cel.StringType),
		cel.Variable(varRcptDomain, cel.StringType),
		cel.Variable(varMX, cel.StringType),
		cel.Variable(varRemoteIP, cel.StringType),
		cel.Variable(varLocalIP, cel.StringType),
		cel.Variable(varLastError, cel.StringType),
		cel.Variable(varLastStatus, cel.IntType),
		cel.Variable(varSize, cel.IntType),
		cel.Variable(varPriority, cel.IntType),
		cel.Variable(varQueueAge, cel.IntType),
		cel.Variable(varSource, cel.StringType),
		cel.Variable(varLists, cel.MapType(cel.StringType, cel.ListType(cel.StringType))),
	)
	if err != nil {
		return nil, fmt.Errorf("creating CEL environment: %w", err)
	}
	// The lists become CEL values once, here: a map of lists of
	// types.String, so that a membership test compares strings without
	// reflecting over Go values or boxing each entry, and looks the value
	// up in a set (namedList).
	copied := make(map[string][]string, len(lists))
	celLists := make(map[ref.Val]ref.Val, len(lists))
	for name, entries := range lists {
		copied[name] = append([]string(nil), entries...)
		celLists[types.String(name)] = newNamedList(entries)
	}
	return &Env{
		cel:     env,
		lists:   copied,
		globals: map[string]any{varLists: types.NewRefValMap(types.DefaultTypeAdapter, celLists)},
		sizes:   listSizes(lists),
	}, nil
}

// HasList reports whether the configuration has a list of that name.
func (e *Env) HasList(name string) bool {
	_, ok := e.lists[name]
	return ok
}

// ListNames returns the names of the configured lists, sorted.
func (e *Env) ListNames() []string {
	names := make([]string, 0, len(e.lists))
	for name := range e.lists {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Condition is a compiled, type-checked rule condition.
type Condition struct {
	expr  string
	prg   cel.Program
	lists []string
}

// Compile parses and type-checks expr, which must yield a bool, and
// estimates its cost: an expression that could cost more than MaxCost is
// refused. An expression whose cost grows with the size of a string
// variable is compiled with a run-time limit of MaxCost. The error quotes
// the expression and CEL's own message.
//
// Compile does not check that the lists the expression names exist, so
// that a Caddyfile's conditions can be checked before its lists are known
// (in an Env without lists, whose lists the estimate takes as empty);
// Setting.Compile does.
func (e *Env) Compile(expr string) (*Condition, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, fmt.Errorf("empty condition")
	}
	ast, iss := e.cel.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("%q: %s", expr, oneLine(iss.Err().Error()))
	}
	if !ast.OutputType().IsExactType(types.BoolType) {
		return nil, fmt.Errorf("%q: yields %s, not bool", expr, ast.OutputType())
	}
	est, err := e.cel.EstimateCost(ast, e.sizes)
	if err != nil {
		return nil, fmt.Errorf("%q: estimating its cost: %w", expr, err)
	}
	if est.Max > MaxCost {
		return nil, fmt.Errorf("%q: may cost %s in the worst case, over the limit of %d "+
			"(strings taken as %d characters, lists as configured): "+
			"loops over lists, and strings built or searched inside loops, are what cost",
			expr, costString(est.Max), MaxCost, e.sizes.strings)
	}
	opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize), cel.Globals(e.globals)}
	// Counting the cost as it runs costs an allocation and some time per
	// evaluation, so it is left out when the estimate holds for strings
	// of any size: then the evaluation cannot cost more than estimated.
	anySize := e.sizes
	anySize.strings = 0
	if est, err := e.cel.EstimateCost(ast, anySize); err != nil || est.Max > MaxCost {
		opts = append(opts, cel.CostTracking(e.sizes), cel.CostLimit(MaxCost))
	}
	prg, err := e.cel.Program(ast, opts...)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", expr, err)
	}
	return &Condition{expr: expr, prg: prg, lists: listsNamed(ast.NativeRep().Expr())}, nil
}

// costString writes a cost estimate, which for an unbounded loop is the
// largest uint64.
func costString(c uint64) string {
	if c == math.MaxUint64 {
		return "without bound"
	}
	return strconv.FormatUint(c, 10)
}

// checkLists returns an error if c reads a list by a name that is not one
// of the configuration's lists.
func (e *Env) checkLists(c *Condition) error {
	for _, name := range c.lists {
		if !e.HasList(name) {
			return e.noList(name)
		}
	}
	return nil
}

func (e *Env) noList(name string) error {
	names := strings.Join(e.ListNames(), ", ")
	if names == "" {
		names = "none"
	}
	return fmt.Errorf("no list named %q (lists: %s)", name, names)
}

// String returns the condition's source text.
func (c *Condition) String() string { return c.expr }

// Eval evaluates the condition with vars. An error is a runtime error of the
// expression, such as a list that does not exist.
func (c *Condition) Eval(vars *Vars) (bool, error) {
	out, _, err := c.prg.Eval(vars)
	if err != nil {
		var cancelled interpreter.EvalCancelledError
		if errors.As(err, &cancelled) && cancelled.Cause == interpreter.CostLimitExceeded {
			return false, fmt.Errorf("%q: stopped: cost limit exceeded (%d; a string variable was longer than the %d characters the estimate took)",
				c.expr, MaxCost, MaxStringSize)
		}
		return false, fmt.Errorf("%q: %w", c.expr, err)
	}
	return isTrue(out), nil
}

func isTrue(v ref.Val) bool {
	b, ok := v.(types.Bool)
	return ok && bool(b)
}

// oneLine folds CEL's multi-line messages (with their caret markers) onto one
// line, so that a config error reads well in a log line.
func oneLine(s string) string {
	lines := strings.Split(s, "\n")
	kept := lines[:0]
	for _, l := range lines {
		l = strings.TrimRight(l, " ")
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "|") {
			continue
		}
		kept = append(kept, t)
	}
	return strings.Join(kept, "; ")
}
