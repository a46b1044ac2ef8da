package api

import "strings"

// Stable values of Error.Code.
const (
	CodeInvalid          = "invalid"
	CodeNotFound         = "not_found"
	CodeConflict         = "conflict"
	CodeUnauthorized     = "unauthorized"
	CodeTooLarge         = "too_large"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

// Error makes *Error usable as a Go error, so that validation and the
// daemon can return the exact body the server will send.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Code)
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	if e.Value != "" {
		b.WriteString(": " + e.Value)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.Allowed != "" {
		b.WriteString(" (allowed: " + e.Allowed + ")")
	}
	return b.String()
}

// invalid builds a validation error.
func invalid(field, value, message, allowed string) *Error {
	return &Error{Code: CodeInvalid, Field: field, Value: value, Message: message, Allowed: allowed}
}
