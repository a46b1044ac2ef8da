package health

import (
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"time"

	"github.com/xlb-dev/xlb/api"
)

// Defaults applied to zero fields of api.Probe. They are chosen so that a
// dead backend is noticed in about 1.5–2 s while a single lost probe never
// marks it down (see docs/health.md for the arithmetic and the comparison
// with loxilb's 60 s × 2 and cloud-provider-kind's 2 s × 2).
const (
	DefaultInterval         = 500 * time.Millisecond
	DefaultTimeout          = 400 * time.Millisecond
	DefaultFailureThreshold = 3
	DefaultSuccessThreshold = 2

	// maxTimeoutDefault caps the derived default timeout when a long
	// interval is configured: a backend that needs more than a second to
	// accept a connection is not healthy in any useful sense.
	maxTimeoutDefault = time.Second

	// maxBodyRead bounds how much of an HTTP body is read to look for
	// ExpectBody, so a backend streaming a huge or endless body cannot make
	// the prober allocate or spin.
	maxBodyRead = 64 << 10
)

// Probe types (api.Probe.Type).
const (
	TypeTCP   = "tcp"
	TypeUDP   = "udp"
	TypeHTTP  = "http"
	TypeHTTPS = "https"
	TypePing  = "ping"
	TypeNone  = "none"
)

// spec is an api.Probe with every default made explicit and durations typed.
// Two targets whose spec is equal probe the same way.
type spec struct {
	Type             string
	Port             uint16 // 0: the backend port
	Interval         time.Duration
	Timeout          time.Duration
	FailureThreshold uint32
	SuccessThreshold uint32

	// http and https
	Method             string
	Path               string
	Host               string
	ExpectStatus       []int // empty: 200-399
	ExpectBody         string
	InsecureSkipVerify bool

	// udp
	Request  string
	Response string
}

// FieldError is returned for a probe field health cannot use. Field is
// relative to the probe ("intervalMillis"); the REST layer prefixes it.
type FieldError struct {
	Field   string
	Value   string
	Allowed string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("probe field %s: invalid value %q (allowed: %s)", e.Field, e.Value, e.Allowed)
}

// normalize checks p and fills in the defaults. It re-checks only what health
// itself depends on; the REST layer (api.ValidateService) is the place that
// rejects everything else with the user-facing message.
func normalize(p api.Probe) (spec, error) {
	s := spec{
		Type:               p.Type,
		Port:               p.Port,
		Method:             p.Method,
		Path:               p.Path,
		Host:               p.Host,
		ExpectStatus:       slices.Clone(p.ExpectStatus),
		ExpectBody:         p.ExpectBody,
		InsecureSkipVerify: p.InsecureSkipVerify,
		Request:            p.Request,
		Response:           p.Response,
		FailureThreshold:   p.FailureThreshold,
		SuccessThreshold:   p.SuccessThreshold,
	}
	if len(s.ExpectStatus) == 0 {
		s.ExpectStatus = nil // one spelling of "default", for equal
	}
	switch s.Type {
	case TypeTCP, TypeUDP, TypeHTTP, TypeHTTPS, TypeNone:
	case TypePing:
		if s.Port != 0 {
			return spec{}, &FieldError{"port", strconv.Itoa(int(s.Port)), "0 for type ping"}
		}
	default:
		return spec{}, &FieldError{"type", s.Type, "tcp, udp, http, https, ping, none"}
	}

	s.Interval = DefaultInterval
	if p.IntervalMillis != 0 {
		if p.IntervalMillis < api.MinProbeIntervalMs || p.IntervalMillis > api.MaxProbeIntervalMs {
			return spec{}, &FieldError{"intervalMillis", strconv.FormatUint(uint64(p.IntervalMillis), 10),
				fmt.Sprintf("0 (default %d) or %d-%d", DefaultInterval.Milliseconds(), api.MinProbeIntervalMs, api.MaxProbeIntervalMs)}
		}
		s.Interval = time.Duration(p.IntervalMillis) * time.Millisecond
	}
	switch {
	case p.TimeoutMillis != 0:
		s.Timeout = time.Duration(p.TimeoutMillis) * time.Millisecond
		if p.TimeoutMillis < api.MinProbeTimeoutMs || s.Timeout > s.Interval {
			return spec{}, &FieldError{"timeoutMillis", strconv.FormatUint(uint64(p.TimeoutMillis), 10),
				fmt.Sprintf("0 (default) or %d up to the interval (%d)", api.MinProbeTimeoutMs, s.Interval.Milliseconds())}
		}
	case p.IntervalMillis == 0:
		s.Timeout = DefaultTimeout
	default:
		// 80 % of the interval keeps one probe from overlapping the next
		// while leaving the backend as much time as the cadence allows.
		s.Timeout = min(s.Interval*4/5, maxTimeoutDefault)
	}

	if s.FailureThreshold == 0 {
		s.FailureThreshold = DefaultFailureThreshold
	}
	if s.SuccessThreshold == 0 {
		s.SuccessThreshold = DefaultSuccessThreshold
	}
	if s.FailureThreshold > api.MaxProbeThreshold {
		return spec{}, &FieldError{"failureThreshold", strconv.FormatUint(uint64(s.FailureThreshold), 10), fmt.Sprintf("0 (default %d) or 1-%d", DefaultFailureThreshold, api.MaxProbeThreshold)}
	}
	if s.SuccessThreshold > api.MaxProbeThreshold {
		return spec{}, &FieldError{"successThreshold", strconv.FormatUint(uint64(s.SuccessThreshold), 10), fmt.Sprintf("0 (default %d) or 1-%d", DefaultSuccessThreshold, api.MaxProbeThreshold)}
	}

	if s.Type == TypeHTTP || s.Type == TypeHTTPS {
		if s.Method == "" {
			s.Method = http.MethodGet
		}
		if s.Path == "" {
			s.Path = "/"
		}
		if s.Path[0] != '/' {
			return spec{}, &FieldError{"path", s.Path, "an absolute URL path starting with '/'"}
		}
		for i, c := range s.ExpectStatus {
			if c < 100 || c > 599 {
				return spec{}, &FieldError{fmt.Sprintf("expectStatus[%d]", i), strconv.Itoa(c), "100-599"}
			}
		}
		if len(s.ExpectBody) > api.MaxProbeTextLength {
			return spec{}, &FieldError{"expectBody", s.ExpectBody[:32] + "...", fmt.Sprintf("at most %d bytes", api.MaxProbeTextLength)}
		}
	}
	return s, nil
}

// equal reports whether two specs probe the same way.
func (s spec) equal(o spec) bool {
	// DeepEqual because ExpectStatus makes spec incomparable with ==; a
	// nil and an empty list mean the same and normalize never yields both.
	return reflect.DeepEqual(s, o)
}
