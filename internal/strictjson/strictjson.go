// Package strictjson checks a JSON document against the Go type it is about
// to be decoded into, and names the key path of the first problem: an unknown
// key, a value of the wrong type, or a value a type's own UnmarshalJSON
// refuses.
//
// encoding/json reports `json: unknown field "implicitt"` with no hint of
// where in a nested config it was; a Caddy user editing a large JSON config
// needs "remotes.lmtp.tls.implicitt: unknown key". This package exists for
// that one job, which no library does for encoding/json's struct tags.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
)

// RuleList is implemented by settings that may be a plain value or a list
// of if/then/else rules (see package rules): Check walks each rule's then and
// else values as the setting's value type.
type RuleList interface {
	// RuleType is the type of the setting's values.
	RuleType() reflect.Type
	// IsRuleListJSON reports whether raw gives the setting as a rule list.
	IsRuleListJSON(raw []byte) bool
}

var (
	ruleListType    = reflect.TypeFor[RuleList]()
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	rawMessageType  = reflect.TypeFor[json.RawMessage]()
)

// Check walks raw against t (a struct type, usually) and returns the first
// problem as "key.path: what is wrong". The root's own UnmarshalJSON, if it
// has one, is not called, so a type can call Check from its UnmarshalJSON.
func Check(raw []byte, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct {
		return walkStruct(raw, t, "")
	}
	return walk(raw, t, "")
}

func walk(raw []byte, t reflect.Type, path string) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == rawMessageType || t.Kind() == reflect.Interface {
		return nil // checked by whoever decodes it (a module, say)
	}
	pt := reflect.PointerTo(t)
	if pt.Implements(ruleListType) {
		return walkSetting(raw, t, path)
	}
	if pt.Implements(unmarshalerType) {
		return leaf(raw, t, path)
	}
	switch t.Kind() {
	case reflect.Struct:
		return walkStruct(raw, t, path)
	case reflect.Map:
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return fmt.Errorf("%s: %s", name(path), clean(err))
		}
		for _, k := range sortedKeys(m) {
			if err := walk(m[k], t.Elem(), join(path, k)); err != nil {
				return err
			}
		}
		return nil
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return leaf(raw, t, path)
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return fmt.Errorf("%s: %s", name(path), clean(err))
		}
		for i, e := range elems {
			if err := walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	}
	return leaf(raw, t, path)
}

func walkSetting(raw []byte, t reflect.Type, path string) error {
	setting := reflect.New(t).Interface().(RuleList)
	elemType := setting.RuleType()
	if !setting.IsRuleListJSON(raw) {
		return walk(raw, elemType, path)
	}
	var rules []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &rules); err != nil {
		return fmt.Errorf("%s: a rule list is an array of objects: %s", name(path), clean(err))
	}
	for i, r := range rules {
		at := fmt.Sprintf("%s[%d]", path, i)
		for _, k := range sortedKeys(r) {
			switch k {
			case "if", "in_list":
				var s string
				if err := json.Unmarshal(r[k], &s); err != nil {
					return fmt.Errorf("%s.%s: want a string", at, k)
				}
			case "then", "else":
				if err := walk(r[k], elemType, at+"."+k); err != nil {
					return err
				}
			default:
				return fmt.Errorf("%s.%s: unknown key in a rule (want if, in_list, then or else)", at, k)
			}
		}
	}
	return nil
}

func walkStruct(raw []byte, t reflect.Type, path string) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("%s: %s", name(path), clean(err))
	}
	fields := jsonFields(t)
	for _, k := range sortedKeys(m) {
		f, ok := fields[k]
		if !ok {
			return fmt.Errorf("%s: unknown key (known: %s)", join(path, k), knownKeys(fields))
		}
		if err := walk(m[k], f.Type, join(path, k)); err != nil {
			return err
		}
	}
	return nil
}

// leaf decodes raw into a new t, to report a wrong type or a value the
// type's UnmarshalJSON refuses, with the path.
func leaf(raw []byte, t reflect.Type, path string) error {
	v := reflect.New(t).Interface()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %s", name(path), clean(err))
	}
	return nil
}

// jsonFields maps JSON key to field, following encoding/json's rules for
// tags and embedded structs (enough of them for config structs).
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		key, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && key == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					if _, dup := out[k]; !dup {
						out[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if key == "" {
			key = f.Name
		}
		out[key] = f
	}
	return out
}

func knownKeys(fields map[string]reflect.StructField) string {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var plainKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

// join appends key to path, quoting a key that is not a plain word.
func join(path, key string) string {
	if !plainKey.MatchString(key) {
		key = fmt.Sprintf("%q", key)
		if path == "" {
			return "[" + key + "]"
		}
		return path + "[" + key + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func name(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

// clean shortens encoding/json's messages: no "json: " prefix, and for a
// type error, only what was wanted.
func clean(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("want %s, got %s", kindWord(te.Type), te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func kindWord(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}
