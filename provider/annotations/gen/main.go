// Command gen writes docs/annotations.md from the annotation declarations.
// Run from the module root: go run ./provider/annotations/gen
package main

import (
	"flag"
	"log"
	"os"

	"github.com/xlb-dev/xlb/provider/annotations"
)

func main() {
	out := flag.String("o", "docs/annotations.md", "output file")
	flag.Parse()
	if err := os.WriteFile(*out, []byte(annotations.Markdown()), 0o644); err != nil {
		log.Fatalf("write %s: %v", *out, err)
	}
}
