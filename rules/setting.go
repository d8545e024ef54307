package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// Rule is one entry of a rule list: either {"if": EXPR, "then": VALUE} or,
// last, {"else": VALUE}.
//
// The older Stalwart form {"if": "rcpt-domain", "in_list": "list/domains",
// "then": VALUE} is accepted too: with in_list, `if` names a variable (a `-`
// in it reads as `_`) and the condition is that variable's membership in the
// named list; "list/" before the list's name is optional.
type Rule[T any] struct {
	// If is the condition: a CEL expression that yields a bool, or with
	// InList, the name of a variable.
	If string `json:"if,omitempty"`

	// InList names a list of the app's `lists`; it makes If a variable name.
	InList string `json:"in_list,omitempty"`

	// Then is the setting's value when If holds.
	Then *T `json:"then,omitempty"`

	// Else is the setting's value when no earlier rule held. Only the last
	// rule has it, and every rule list ends with one.
	Else *T `json:"else,omitempty"`
}

// Setting is a configuration value of type T given either plainly or as a
// rule list. Its zero value is "not set": Provision of the app replaces it by
// the default.
type Setting[T any] struct {
	value T
	set   bool
	rules []Rule[T]

	// after Compile:
	conds []*Condition
	path  string
}

// Plain returns a setting with the fixed value v.
func Plain[T any](v T) Setting[T] { return Setting[T]{value: v, set: true} }

// List returns a setting given by rules. Compile checks the rules.
func List[T any](rules ...Rule[T]) Setting[T] { return Setting[T]{rules: rules} }

// IsZero reports whether the setting was not given at all (so that
// encoding/json's omitzero leaves it out, and Provision can default it).
func (s Setting[T]) IsZero() bool { return !s.set && s.rules == nil }

// IsPlain reports whether the setting is a plain value, not a rule list.
func (s Setting[T]) IsPlain() bool { return s.set }

// Value returns the plain value; ok is false for a rule list or an unset
// setting.
func (s Setting[T]) Value() (v T, ok bool) { return s.value, s.set }

// Rules returns the rule list, nil for a plain value.
func (s Setting[T]) Rules() []Rule[T] { return s.rules }

// Values returns every value the setting can take: the plain value, or each
// rule's then/else. Validation uses it to check all of them.
func (s Setting[T]) Values() []T {
	if s.set {
		return []T{s.value}
	}
	out := make([]T, 0, len(s.rules))
	for _, r := range s.rules {
		switch {
		case r.Then != nil:
			out = append(out, *r.Then)
		case r.Else != nil:
			out = append(out, *r.Else)
		}
	}
	return out
}

// Each calls fn for every value the setting can take with the key path of
// that value (path itself, or path[i].then / path[i].else), stopping at the
// first error. fn may change the value in place (Provision uses that to
// resolve placeholders).
func (s *Setting[T]) Each(path string, fn func(path string, v *T) error) error {
	if s.set {
		return fn(path, &s.value)
	}
	for i := range s.rules {
		r := &s.rules[i]
		var err error
		switch {
		case r.Then != nil:
			err = fn(fmt.Sprintf("%s[%d].then", path, i), r.Then)
		case r.Else != nil:
			err = fn(fmt.Sprintf("%s[%d].else", path, i), r.Else)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Compile checks the rule list's shape and compiles its conditions in env,
// refusing a condition that may cost more than MaxCost or that reads a list
// env does not have (lists.nosuch, lists["nosuch"]). path is the setting's
// key path, used in errors and in Eval's errors.
func (s *Setting[T]) Compile(path string, env *Env) error {
	s.path = path
	s.conds = nil
	if s.set || s.rules == nil {
		return nil
	}
	if len(s.rules) == 0 {
		return fmt.Errorf("%s: empty rule list (give a plain value, or rules ending with else)", path)
	}
	conds := make([]*Condition, 0, len(s.rules)-1)
	for i, r := range s.rules {
		at := fmt.Sprintf("%s[%d]", path, i)
		last := i == len(s.rules)-1
		switch {
		case r.Else != nil:
			if r.If != "" || r.InList != "" || r.Then != nil {
				return fmt.Errorf("%s: an else rule has no if, in_list or then", at)
			}
			if !last {
				return fmt.Errorf("%s: else must be the last rule (%d more follow)", at, len(s.rules)-1-i)
			}
		case r.If == "":
			return fmt.Errorf("%s: rule needs if (or is the final else)", at)
		case r.Then == nil:
			return fmt.Errorf("%s.then: rule with if needs a then value", at)
		default:
			expr := r.If
			if r.InList != "" {
				var err error
				if expr, err = inListExpr(r.If, r.InList, env); err != nil {
					return fmt.Errorf("%s.in_list: %w", at, err)
				}
			}
			c, err := env.Compile(expr)
			if err != nil {
				return fmt.Errorf("%s.if: %w", at, err)
			}
			if err := env.checkLists(c); err != nil {
				return fmt.Errorf("%s.if: %q: %w", at, expr, err)
			}
			conds = append(conds, c)
		}
		if last && r.Else == nil {
			return fmt.Errorf("%s: rule list has no else: end it with {\"else\": VALUE}", path)
		}
	}
	s.conds = conds
	return nil
}

// inListExpr turns the older form's variable and list into a CEL condition.
func inListExpr(variable, list string, env *Env) (string, error) {
	name := strings.ReplaceAll(strings.TrimSpace(variable), "-", "_")
	if _, ok := (&Vars{}).ResolveName(name); !ok {
		return "", fmt.Errorf("if %q: with in_list, if must name a variable such as rcpt_domain", variable)
	}
	list = strings.TrimPrefix(list, "list/")
	if !env.HasList(list) {
		return "", env.noList(list)
	}
	return fmt.Sprintf("%s in lists[%q]", name, list), nil
}

// Eval returns the setting's value for vars: the plain value at no cost, or
// the value of the first rule whose condition holds. Compile must have run.
func (s *Setting[T]) Eval(vars *Vars) (T, error) {
	if s.set {
		return s.value, nil
	}
	for i, c := range s.conds {
		ok, err := c.Eval(vars)
		if err != nil {
			var zero T
			return zero, fmt.Errorf("%s[%d].if: %w", s.path, i, err)
		}
		if ok {
			return *s.rules[i].Then, nil
		}
	}
	if n := len(s.rules); n > 0 && s.rules[n-1].Else != nil {
		return *s.rules[n-1].Else, nil
	}
	var zero T
	return zero, fmt.Errorf("%s: setting is unset or was not compiled", s.path)
}

// MarshalJSON writes the plain value, or the rule list.
func (s Setting[T]) MarshalJSON() ([]byte, error) {
	if s.rules != nil {
		return json.Marshal(s.rules)
	}
	return json.Marshal(s.value)
}

// UnmarshalJSON reads a plain value or a rule list (a JSON array whose first
// element is an object with "if" or "else"), rejecting unknown keys.
func (s *Setting[T]) UnmarshalJSON(b []byte) error {
	*s = Setting[T]{}
	if IsRuleList(b) {
		var rs []Rule[T]
		if err := decodeStrict(b, &rs); err != nil {
			return err
		}
		if rs == nil {
			rs = []Rule[T]{}
		}
		s.rules = rs
		return nil
	}
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return nil
	}
	if err := decodeStrict(b, &s.value); err != nil {
		return err
	}
	s.set = true
	return nil
}

// RuleType returns the reflect type of the values the setting holds, for
// tools that walk a config's keys.
func (s Setting[T]) RuleType() reflect.Type { return reflect.TypeFor[T]() }

// IsRuleListJSON reports whether raw gives the setting as a rule list.
func (s Setting[T]) IsRuleListJSON(raw []byte) bool { return IsRuleList(raw) }

// IsRuleList reports whether raw JSON is a rule list: an array whose first
// element is an object with an "if" or an "else" key. (A plain value may
// itself be an array, such as source_ip.v4.)
func IsRuleList(raw []byte) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		return false
	}
	var elems []json.RawMessage
	if json.Unmarshal(raw, &elems) != nil || len(elems) == 0 {
		return false
	}
	var first map[string]json.RawMessage
	if json.Unmarshal(elems[0], &first) != nil {
		return false
	}
	_, hasIf := first["if"]
	_, hasElse := first["else"]
	return hasIf || hasElse
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
