package strictjson

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type color string

func (c *color) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if s != "red" && s != "blue" {
		return fmt.Errorf("unknown color %q", s)
	}
	*c = color(s)
	return nil
}

// setting is a stand-in for rules.Setting: a value or a rule list.
type setting[T any] struct{}

func (setting[T]) RuleType() reflect.Type { return reflect.TypeFor[T]() }
func (setting[T]) IsRuleListJSON(raw []byte) bool {
	return len(raw) > 1 && raw[0] == '[' && raw[1] == '{'
}

type inner struct {
	Port    int             `json:"port,omitempty"`
	Colors  []color         `json:"colors,omitempty"`
	Skipped string          `json:"-"`
	Raw     json.RawMessage `json:"raw,omitempty"`
}

type embedded struct {
	Extra bool `json:"extra,omitempty"`
}

type root struct {
	embedded
	Name    string            `json:"name,omitempty"`
	Inner   *inner            `json:"inner,omitempty"`
	ByName  map[string]*inner `json:"by_name,omitempty"`
	Setting setting[color]    `json:"setting,omitzero"`
	Wait    time.Duration     `json:"wait,omitempty"`
	hidden  int
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want string // "" for no error
	}{
		{"valid", `{"name": "a", "inner": {"port": 1, "colors": ["red"], "raw": {"anything": 1}}, "extra": true}`, ""},
		{"nulls", `{"name": null, "inner": null, "by_name": {"x": null}}`, ""},
		{"unknown top key", `{"nmae": "a"}`, "nmae: unknown key (known: by_name, extra, inner, name, setting, wait)"},
		{"unknown nested key", `{"inner": {"prot": 1}}`, "inner.prot: unknown key"},
		{"unknown key under map", `{"by_name": {"a": {"prot": 1}}}`, "by_name.a.prot: unknown key"},
		{"odd map key quoted", `{"by_name": {"a b": {"prot": 1}}}`, `by_name["a b"].prot: unknown key`},
		{"tagged-out field is unknown", `{"Skipped": "x"}`, "Skipped: unknown key"},
		{"unexported field is unknown", `{"hidden": 1}`, "hidden: unknown key"},
		{"wrong type", `{"inner": {"port": "one"}}`, "inner.port: want an integer, got string"},
		{"wrong container", `{"inner": []}`, "inner: want an object, got array"},
		{"unmarshaler refuses", `{"inner": {"colors": ["red", "green"]}}`, `inner.colors[1]: unknown color "green"`},
		{"setting plain", `{"setting": "blue"}`, ""},
		{"setting plain refused", `{"setting": "green"}`, `setting: unknown color "green"`},
		{"setting rules", `{"setting": [{"if": "x", "then": "red"}, {"else": "blue"}]}`, ""},
		{"setting rule value refused", `{"setting": [{"if": "x", "then": "green"}, {"else": "blue"}]}`, `setting[0].then: unknown color "green"`},
		{"setting rule unknown key", `{"setting": [{"if": "x", "them": "red"}]}`, "setting[0].them: unknown key in a rule"},
		{"setting rule if not string", `{"setting": [{"if": 1, "then": "red"}]}`, "setting[0].if: want a string"},
		{"top level not object", `[1]`, "(top level): want an object, got array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check([]byte(tt.raw), reflect.TypeFor[root]())
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}
