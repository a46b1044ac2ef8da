package apiserver_test

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/internal/apiserver"
)

type openapiDoc struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
			Example    json.RawMessage            `json:"example"`
		} `json:"schemas"`
	} `json:"components"`
}

func loadDoc(t *testing.T) openapiDoc {
	t.Helper()
	var doc openapiDoc
	if err := json.Unmarshal(apiserver.OpenAPI(), &doc); err != nil {
		t.Fatalf("embedded openapi.json is not JSON: %v", err)
	}
	return doc
}

// The served document is docs/openapi.json, byte for byte.
func TestOpenAPIEmbeddedCopyIsCurrent(t *testing.T) {
	docs, err := os.ReadFile("../../docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(docs, apiserver.OpenAPI()) {
		t.Fatal("internal/apiserver/openapi.json differs from docs/openapi.json: cp docs/openapi.json internal/apiserver/openapi.json")
	}
}

// Every route the server registers is documented, and vice versa.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadDoc(t)
	served := map[string]bool{}
	for _, r := range apiserver.New(apiserver.Options{}).Routes() {
		served[strings.ToLower(r.Method)+" "+r.Path] = true
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			if method == "parameters" {
				continue
			}
			documented[method+" "+path] = true
		}
	}
	if !reflect.DeepEqual(served, documented) {
		t.Fatalf("routes and document differ:\nserved:     %v\ndocumented: %v", keys(served), keys(documented))
	}
}

// jsonFields lists the JSON names of a struct's fields; embedded structs
// without a tag contribute their own fields, as encoding/json does.
func jsonFields(rt reflect.Type) []string {
	var out []string
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && tag == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		out = append(out, tag)
	}
	return out
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Every schema lists exactly the JSON fields of its Go type.
func TestOpenAPISchemasMatchTypes(t *testing.T) {
	doc := loadDoc(t)
	types := map[string]any{
		"Service": api.Service{}, "ServiceSpec": api.ServiceSpec{}, "Backend": api.Backend{}, "Probe": api.Probe{},
		"ServiceBGP": api.ServiceBGP{}, "ServiceStatus": api.ServiceStatus{}, "BackendStatus": api.BackendStatus{},
		"ServiceList": api.ServiceList{}, "BulkReplace": api.BulkReplace{}, "BulkResult": api.BulkResult{},
		"Status": api.Status{}, "InterfaceStatus": api.InterfaceStatus{}, "L2Status": api.L2Status{}, "Flow": api.Flow{}, "FlowList": api.FlowList{}, "Error": api.Error{},
		"ServiceL2": api.ServiceL2{}, "BGPGlobal": api.BGPGlobal{}, "BGPPeer": api.BGPPeer{}, "BGPPeerList": api.BGPPeerList{},
		"BGPPeerReplace": api.BGPPeerReplace{}, "BGPStatus": api.BGPStatus{}, "BGPPeerStatus": api.BGPPeerStatus{},
	}
	if len(types) != len(doc.Components.Schemas) {
		t.Errorf("document has %d schemas, test knows %d", len(doc.Components.Schemas), len(types))
	}
	for name, v := range types {
		schema, ok := doc.Components.Schemas[name]
		if !ok {
			t.Errorf("schema %s missing", name)
			continue
		}
		var docFields []string
		goFields := jsonFields(reflect.TypeOf(v))
		for p := range schema.Properties {
			docFields = append(docFields, p)
		}
		sort.Strings(goFields)
		sort.Strings(docFields)
		if !reflect.DeepEqual(goFields, docFields) {
			t.Errorf("schema %s: document %v, Go %v", name, docFields, goFields)
		}
	}
}

// Every example in the document decodes strictly into its Go type, and
// example services pass validation.
func TestOpenAPIExamplesValidate(t *testing.T) {
	var raw map[string]any
	if err := json.Unmarshal(apiserver.OpenAPI(), &raw); err != nil {
		t.Fatal(err)
	}
	types := map[string]func() any{
		"Service": func() any { return &api.Service{} }, "ServiceList": func() any { return &api.ServiceList{} },
		"BulkReplace": func() any { return &api.BulkReplace{} }, "BulkResult": func() any { return &api.BulkResult{} },
		"Status": func() any { return &api.Status{} }, "FlowList": func() any { return &api.FlowList{} }, "Error": func() any { return &api.Error{} },
		"BGPGlobal": func() any { return &api.BGPGlobal{} }, "BGPPeer": func() any { return &api.BGPPeer{} },
		"BGPPeerStatus": func() any { return &api.BGPPeerStatus{} }, "BGPPeerList": func() any { return &api.BGPPeerList{} },
		"BGPPeerReplace": func() any { return &api.BGPPeerReplace{} }, "BGPStatus": func() any { return &api.BGPStatus{} },
	}
	checked := 0
	var walk func(path string, n any)
	walk = func(path string, n any) {
		m, ok := n.(map[string]any)
		if !ok {
			if l, ok := n.([]any); ok {
				for _, v := range l {
					walk(path, v)
				}
			}
			return
		}
		if ex, ok := m["example"]; ok {
			if schema, ok := m["schema"].(map[string]any); ok {
				ref, _ := schema["$ref"].(string)
				name := strings.TrimPrefix(ref, "#/components/schemas/")
				if mk, ok := types[name]; ok {
					data, _ := json.Marshal(ex)
					v := mk()
					if err := api.DecodeStrict(data, v); err != nil {
						t.Errorf("%s: example does not decode into %s: %v", path, name, err)
					}
					validateExample(t, path, v)
					checked++
				}
			}
		}
		for k, v := range m {
			walk(path+"/"+k, v)
		}
	}
	walk("", raw["paths"])
	var errExample api.Error
	ex, _ := json.Marshal(raw["components"].(map[string]any)["schemas"].(map[string]any)["Error"].(map[string]any)["example"])
	if err := api.DecodeStrict(ex, &errExample); err != nil || errExample.Code == "" {
		t.Errorf("Error example: %v", err)
	}
	if checked < 6 {
		t.Fatalf("only %d examples checked", checked)
	}
}

func validateExample(t *testing.T, path string, v any) {
	t.Helper()
	var svcs []api.Service
	switch x := v.(type) {
	case *api.Service:
		svcs = []api.Service{*x}
	case *api.ServiceList:
		svcs = x.Items
	case *api.BulkReplace:
		if err := api.ValidateSelector("selector", x.Selector); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		svcs = x.Services
	}
	for _, s := range svcs {
		if err := api.ValidateService(&s, api.ValidateOptions{}); err != nil {
			t.Errorf("%s: example service invalid: %v", path, err)
		}
	}
}
