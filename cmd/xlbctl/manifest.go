package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/xlb-dev/xlb/api"
)

// manifestService is one service read from a manifest and where it came
// from, for error messages.
type manifestService struct {
	svc    api.Service
	source string
}

// parseManifest reads services from YAML or JSON: one api.Service, a list
// of them, an api.ServiceList ({"items": [...]}, what `get services -o yaml`
// prints), or several YAML documents separated by "---". Unknown fields
// are rejected with their full path. Status, being read-only, is dropped so
// that the output of `get -o yaml` can be applied back.
func parseManifest(name string, data []byte) ([]manifestService, error) {
	var out []manifestService
	docs := splitYAMLDocuments(data)
	for i, doc := range docs {
		where := name
		if len(docs) > 1 {
			where = fmt.Sprintf("%s: document %d", name, i+1)
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		var generic any
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.UseNumber()
		if err := dec.Decode(&generic); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		switch v := generic.(type) {
		case nil: // empty document
		case []any:
			for j, item := range v {
				s, err := decodeService(item, fmt.Sprintf("[%d].", j))
				if err != nil {
					return nil, fmt.Errorf("%s: %w", where, err)
				}
				out = append(out, manifestService{svc: s, source: fmt.Sprintf("%s, item %d", where, j+1)})
			}
		case map[string]any:
			if isServiceList(v) {
				items, _ := v["items"].([]any)
				if _, ok := v["items"].([]any); !ok && v["items"] != nil {
					return nil, fmt.Errorf("%s: field items: want a list of services", where)
				}
				for j, item := range items {
					s, err := decodeService(item, fmt.Sprintf("items[%d].", j))
					if err != nil {
						return nil, fmt.Errorf("%s: %w", where, err)
					}
					out = append(out, manifestService{svc: s, source: fmt.Sprintf("%s, item %d", where, j+1)})
				}
				continue
			}
			s, err := decodeService(v, "")
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			out = append(out, manifestService{svc: s, source: where})
		default:
			return nil, fmt.Errorf("%s: want a service, a list of services or {items: [...]}, got %s", where, jsonKind(generic))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no services found", name)
	}
	return out, nil
}

// isServiceList tells {"items": [...]} from a service: a service has no
// "items" field, a list has nothing else.
func isServiceList(m map[string]any) bool {
	_, hasItems := m["items"]
	return hasItems && len(m) == 1
}

// splitYAMLDocuments splits at lines that are exactly "---" (optionally
// followed by a comment). JSON never contains such a line.
func splitYAMLDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), len(data)+1)
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimRight(line, " \t\r")
		if t == "---" || strings.HasPrefix(t, "--- #") {
			docs = append(docs, slices.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	docs = append(docs, cur.Bytes())
	return docs
}

func jsonKind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// decodeService checks v against api.Service field by field (so that an
// unknown or misspelt field is reported with its path), then decodes it.
func decodeService(v any, prefix string) (api.Service, error) {
	if _, ok := v.(map[string]any); !ok {
		return api.Service{}, fmt.Errorf("%s: want a service object, got %s", strings.TrimSuffix(prefix, "."), jsonKind(v))
	}
	if err := checkFields(v, reflect.TypeFor[api.Service](), prefix); err != nil {
		return api.Service{}, err
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return api.Service{}, err
	}
	var s api.Service
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return api.Service{}, fmt.Errorf("field %s%s: got %s, want %s", prefix, te.Field, te.Value, describeType(te.Type))
		}
		return api.Service{}, err
	}
	if s.Name == "" {
		return api.Service{}, fmt.Errorf("field %sname: required", prefix)
	}
	s.Status = nil
	return s, nil
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Uint8:
		return "an integer 0-255"
	case reflect.Uint16:
		return "an integer 0-65535"
	case reflect.Uint32:
		return "an integer 0-4294967295"
	case reflect.Uint64, reflect.Uint:
		return "a non-negative integer"
	case reflect.Int, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

// jsonFields maps the JSON names of a struct's fields to their types.
func jsonFields(t reflect.Type) (map[string]reflect.Type, []string) {
	fields := map[string]reflect.Type{}
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
		names = append(names, name)
	}
	return fields, names
}

// checkFields walks a decoded JSON value alongside the Go type it is meant
// for and rejects object keys the type does not have. encoding/json names
// only the key, not where it is, and matches keys case-insensitively;
// operators deserve "spec.backends[1].adress" and exact names.
func checkFields(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return nil // a type mismatch, reported by the decoder
		}
		fields, names := jsonFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("unknown field %q%s", path+k, suggest(k, names))
			}
			if err := checkFields(m[k], ft, path+k+"."); err != nil {
				return err
			}
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			return nil
		}
		base := strings.TrimSuffix(path, ".")
		for i, e := range l {
			if err := checkFields(e, t.Elem(), fmt.Sprintf("%s[%d].", base, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// suggest names the intended field for a near miss, otherwise lists the
// allowed ones.
func suggest(k string, names []string) string {
	// Short names are near everything within two edits ("mode" and
	// "name"), so they get a tighter bound.
	maxEdits := 2
	if len(k) <= 4 {
		maxEdits = 1
	}
	for _, n := range names {
		if strings.EqualFold(k, n) || editDistance(strings.ToLower(k), strings.ToLower(n)) <= maxEdits {
			return fmt.Sprintf(" (did you mean %q?)", n)
		}
	}
	return " (allowed: " + strings.Join(names, ", ") + ")"
}

// editDistance is the optimal-string-alignment distance: insertions,
// deletions, substitutions and swaps of adjacent letters ("prot") cost 1.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
