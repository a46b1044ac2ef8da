package main

import (
	"strings"
	"testing"
)

// FuzzParseManifest: any input either parses into named services or fails
// with an error that names the file; it never panics.
func FuzzParseManifest(f *testing.F) {
	for _, seed := range []string{
		"name: web\nspec: {vips: [198.19.0.10], port: 80, protocol: tcp, backends: [{address: 198.18.1.10, port: 8080}]}\n",
		`{"name":"web","spec":{"vips":["198.19.0.10"],"port":80,"protocol":"tcp","backends":[]}}`,
		`{"items":[{"name":"a","spec":{}},{"name":"b","spec":{}}]}`,
		"---\nname: a\n---\nname: b\n",
		"name: web\nspec: {backends: [{adress: x}]}\n",
		"- name: a\n- name: b\n",
		"name: [\n",
		"",
		"name: a\nname: b\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data string) {
		svcs, err := parseManifest("in.yaml", []byte(data))
		if err != nil {
			if !strings.Contains(err.Error(), "in.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for i, s := range svcs {
			if s.svc.Name == "" {
				t.Fatalf("service %d parsed without a name from %q", i, data)
			}
		}
	})
}
