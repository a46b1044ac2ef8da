package apiserver

import (
	_ "embed"
	"net/http"
	"strconv"
)

// openapiJSON is a copy of docs/openapi.json (a test keeps them identical;
// an embed pattern cannot reach outside the package directory).
//
//go:embed openapi.json
var openapiJSON []byte

// OpenAPI returns the embedded OpenAPI 3 document.
func OpenAPI() []byte { return append([]byte(nil), openapiJSON...) }

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(openapiJSON)))
	_, _ = w.Write(openapiJSON)
}
