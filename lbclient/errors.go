package lbclient

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/xlb-dev/xlb/api"
)

// APIError is a non-2xx answer of xlbd. Detail is the server's api.Error;
// when the body was not an api.Error (a proxy in the way, a plain-text
// /readyz answer) Detail.Code is derived from the status and Detail.Message
// holds the start of the body.
type APIError struct {
	Method     string
	Path       string
	StatusCode int
	Detail     api.Error
}

// Error renders the answer so that an operator can act on it without
// reading the JSON: method, path and status, then api.Error's own
// rendering (code: field: value: message (allowed: ...)), e.g.
//
//	PUT /v1/services/web: 400 invalid: spec.backends[0].port: 0: ... (allowed: 1-65535)
func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.StatusCode, e.Detail.Error())
}

// codeForStatus gives the api.Error code a status implies, for bodies that
// carry none.
func codeForStatus(status int) string {
	switch {
	case status == http.StatusBadRequest || status == http.StatusUnprocessableEntity:
		return api.CodeInvalid
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return api.CodeUnauthorized
	case status == http.StatusNotFound:
		return api.CodeNotFound
	case status == http.StatusConflict:
		return api.CodeConflict
	case status == http.StatusRequestEntityTooLarge:
		return api.CodeTooLarge
	case status == http.StatusMethodNotAllowed:
		return api.CodeMethodNotAllowed
	case status == http.StatusServiceUnavailable:
		return api.CodeUnavailable
	case status >= 500:
		return api.CodeInternal
	}
	return ""
}

// asAPIError unwraps err to an *APIError.
func asAPIError(err error) (*APIError, bool) {
	var ae *APIError
	ok := errors.As(err, &ae)
	return ae, ok
}

// IsNotFound reports whether err is xlbd saying the object does not exist.
func IsNotFound(err error) bool {
	ae, ok := asAPIError(err)
	return ok && (ae.StatusCode == http.StatusNotFound || ae.Detail.Code == api.CodeNotFound)
}

// IsConflict reports whether err is a 409 / code "conflict" (e.g. a VIP,
// port and protocol already used by another service).
func IsConflict(err error) bool {
	ae, ok := asAPIError(err)
	return ok && (ae.StatusCode == http.StatusConflict || ae.Detail.Code == api.CodeConflict)
}

// IsInvalid reports whether err is a validation error; Detail.Field names
// the offending field.
func IsInvalid(err error) bool {
	ae, ok := asAPIError(err)
	return ok && (ae.StatusCode == http.StatusBadRequest || ae.Detail.Code == api.CodeInvalid)
}

// IsUnauthorized reports whether xlbd refused the credentials (401 or 403).
func IsUnauthorized(err error) bool {
	ae, ok := asAPIError(err)
	return ok && (ae.StatusCode == http.StatusUnauthorized || ae.StatusCode == http.StatusForbidden ||
		ae.Detail.Code == api.CodeUnauthorized)
}
