package apiserver_test

import (
	"net/http"
	"testing"

	"github.com/xlb-dev/xlb/api"
)

// Without a BGP core the routes exist (they are documented) but answer 503;
// unknown query parameters and bad methods are rejected as elsewhere.
func TestBGPRoutesWithoutBGP(t *testing.T) {
	e := newEnv(t, "tok")
	for _, r := range []struct{ method, path string }{
		{http.MethodGet, "/v1/bgp"}, {http.MethodPut, "/v1/bgp"}, {http.MethodDelete, "/v1/bgp"},
		{http.MethodGet, "/v1/bgp/peers"}, {http.MethodPut, "/v1/bgp/peers"},
		{http.MethodPut, "/v1/bgp/peers/192.0.2.1"}, {http.MethodDelete, "/v1/bgp/peers/2001:db8::1"},
	} {
		var er api.Error
		if code := e.do(r.method, r.path, nil, &er); code != http.StatusServiceUnavailable || er.Code != api.CodeUnavailable {
			t.Errorf("%s %s: %d %+v, want 503 unavailable", r.method, r.path, code, er)
		}
	}
	var er api.Error
	if code := e.do(http.MethodGet, "/v1/bgp?x=1", nil, &er); code != http.StatusBadRequest || er.Field != "x" {
		t.Errorf("unknown query: %d %+v", code, er)
	}
	if code := e.do(http.MethodPost, "/v1/bgp/peers", nil, &er); code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", code)
	}
}
