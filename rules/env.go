package rules

import (
	"fmt"
	"sort"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
)

// Env is the CEL environment of one configuration: the declared variables
// and the app's named lists. One Env compiles every rule of a config.
type Env struct {
	cel   *cel.Env
	lists map[string][]string
	// globals is the lists as one CEL value, given to every program.
	globals map[string]any
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
		cel.Variable(varLists, cel.MapType(cel.StringType, cel.ListType(cel.StringType))),
	)
	if err != nil {
		return nil, fmt.Errorf("creating CEL environment: %w", err)
	}
	// The lists become CEL values once, here: a map of lists of
	// types.String, so that a membership test compares strings without
	// reflecting over Go values or boxing each entry.
	copied := make(map[string][]string, len(lists))
	celLists := make(map[ref.Val]ref.Val, len(lists))
	for name, entries := range lists {
		copied[name] = append([]string(nil), entries...)
		vals := make([]ref.Val, len(entries))
		for i, e := range entries {
			vals[i] = types.String(e)
		}
		celLists[types.String(name)] = types.NewRefValList(types.DefaultTypeAdapter, vals)
	}
	return &Env{
		cel:     env,
		lists:   copied,
		globals: map[string]any{varLists: types.NewRefValMap(types.DefaultTypeAdapter, celLists)},
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
	expr string
	prg  cel.Program
}

// Compile parses and type-checks expr, which must yield a bool. The error
// quotes the expression and CEL's own message.
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
	prg, err := e.cel.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.Globals(e.globals))
	if err != nil {
		return nil, fmt.Errorf("%q: %w", expr, err)
	}
	return &Condition{expr: expr, prg: prg}, nil
}

// String returns the condition's source text.
func (c *Condition) String() string { return c.expr }

// Eval evaluates the condition with vars. An error is a runtime error of the
// expression, such as a list that does not exist.
func (c *Condition) Eval(vars *Vars) (bool, error) {
	out, _, err := c.prg.Eval(vars)
	if err != nil {
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
