package lbclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/xlb-dev/xlb/api"
)

func servicePath(name string) (string, error) {
	if name == "" {
		// Without this check GET /v1/services/ would silently list.
		return "", errors.New("service name is empty")
	}
	return "/v1/services/" + url.PathEscape(name), nil
}

// PutService creates or replaces the service svc.Name. created is true when
// the service did not exist before (HTTP 201).
func (c *Client) PutService(ctx context.Context, svc api.Service) (api.Service, bool, error) {
	path, err := servicePath(svc.Name)
	if err != nil {
		return api.Service{}, false, fmt.Errorf("put service: %w", err)
	}
	return call[api.Service](ctx, c, http.MethodPut, path, nil, svc, "put service "+svc.Name)
}

// GetService returns one service with its live status. IsNotFound(err)
// tells a missing service.
func (c *Client) GetService(ctx context.Context, name string) (api.Service, error) {
	path, err := servicePath(name)
	if err != nil {
		return api.Service{}, fmt.Errorf("get service: %w", err)
	}
	out, _, err := call[api.Service](ctx, c, http.MethodGet, path, nil, nil, "get service")
	return out, err
}

// ListServices returns the services whose labels contain every pair of
// selector (nil or empty: all services).
func (c *Client) ListServices(ctx context.Context, selector map[string]string) (api.ServiceList, error) {
	var q url.Values
	if len(selector) > 0 {
		sel, err := FormatSelector(selector)
		if err != nil {
			return api.ServiceList{}, fmt.Errorf("list services: %w", err)
		}
		q = url.Values{"selector": {sel}}
	}
	out, _, err := call[api.ServiceList](ctx, c, http.MethodGet, "/v1/services", q, nil, "list services")
	return out, err
}

// DeleteService deletes one service. IsNotFound(err) tells that it did not
// exist (which callers converging on "absent" usually treat as success).
func (c *Client) DeleteService(ctx context.Context, name string) error {
	path, err := servicePath(name)
	if err != nil {
		return fmt.Errorf("delete service: %w", err)
	}
	_, err = c.do(ctx, request{method: http.MethodDelete, path: path})
	return err
}

// BulkReplace makes the set of services matching b.Selector equal to
// b.Services in one call (the CCM's full re-sync after an xlbd restart).
func (c *Client) BulkReplace(ctx context.Context, b api.BulkReplace) (api.BulkResult, error) {
	out, _, err := call[api.BulkResult](ctx, c, http.MethodPut, "/v1/services", nil, b, "bulk replace")
	return out, err
}

// Status returns xlbd's global state.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	out, _, err := call[api.Status](ctx, c, http.MethodGet, "/v1/status", nil, nil, "status")
	return out, err
}

// Filter selects conntrack entries. Zero fields do not filter.
type Filter struct {
	// VIP: "addr" or "addr:port".
	VIP string
	// Client: "addr" or "addr:port".
	Client string
	// Limit: at most this many entries (0: the server's default page).
	Limit int
	// After: the cursor of the previous page (FlowList.Next).
	After string
}

// Conntrack returns one page of conntrack entries.
func (c *Client) Conntrack(ctx context.Context, f Filter) (api.FlowList, error) {
	if f.Limit < 0 {
		return api.FlowList{}, fmt.Errorf("conntrack: limit %d is negative", f.Limit)
	}
	q := url.Values{}
	if f.VIP != "" {
		q.Set("vip", f.VIP)
	}
	if f.Client != "" {
		q.Set("client", f.Client)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	out, _, err := call[api.FlowList](ctx, c, http.MethodGet, "/v1/conntrack", q, nil, "conntrack")
	return out, err
}

// Healthz returns nil when xlbd is alive.
func (c *Client) Healthz(ctx context.Context) error {
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/healthz", statusIsAnswer: true})
	return err
}

// Readyz returns nil when xlbd is ready to serve traffic; otherwise the
// *APIError carries the server's reason.
func (c *Client) Readyz(ctx context.Context) error {
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/readyz", statusIsAnswer: true})
	return err
}

// OpenAPI returns the OpenAPI document of the API.
func (c *Client) OpenAPI(ctx context.Context) ([]byte, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/openapi.json"})
	if err != nil {
		return nil, err
	}
	return resp.Body(), nil
}

// Metrics returns the Prometheus text exposition of /metrics.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "/metrics"})
	if err != nil {
		return nil, err
	}
	return resp.Body(), nil
}

// FormatSelector renders a label selector as the API's "k=v,k2=v2" with
// sorted keys. Keys and values may not contain ',' or '=' (the API could
// not tell them apart), and keys may not be empty.
func FormatSelector(sel map[string]string) (string, error) {
	keys := make([]string, 0, len(sel))
	for k, v := range sel {
		if k == "" {
			return "", errors.New("selector: empty label key")
		}
		if strings.ContainsAny(k, ",=") {
			return "", fmt.Errorf("selector: label key %q contains ',' or '='", k)
		}
		if strings.ContainsAny(v, ",=") {
			return "", fmt.Errorf("selector: value %q of label %q contains ',' or '='", v, k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + sel[k]
	}
	return strings.Join(parts, ","), nil
}

// ParseSelector parses "k=v,k2=v2" (the form xlbctl takes and the API
// uses). An empty string is the empty selector.
func ParseSelector(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("selector %q: %q is not key=value", s, part)
		}
		if strings.Contains(v, "=") {
			return nil, fmt.Errorf("selector %q: value of %q contains '='", s, k)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("selector %q: label %q given twice", s, k)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}
