package bgp

import (
	"context"
	"log/slog"

	glog "github.com/osrg/gobgp/v3/pkg/log"
)

// logger adapts GoBGP's logging interface to slog. GoBGP is chatty at info
// level (every FSM step), so its info messages are logged at debug, except
// peer state changes, which operators want to see.
type logger struct {
	l     *slog.Logger
	level glog.LogLevel
}

func newLogger(l *slog.Logger) *logger {
	return &logger{l: l.With("component", "gobgp"), level: glog.InfoLevel}
}

func attrs(f glog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	for k, v := range f {
		if k == glog.FieldFacility {
			continue
		}
		out = append(out, k, v)
	}
	return out
}

func (g *logger) Panic(msg string, f glog.Fields) { g.l.Error(msg, attrs(f)...); panic(msg) }
func (g *logger) Fatal(msg string, f glog.Fields) { g.l.Error(msg, attrs(f)...) }
func (g *logger) Error(msg string, f glog.Fields) { g.l.Error(msg, attrs(f)...) }
func (g *logger) Warn(msg string, f glog.Fields)  { g.l.Warn(msg, attrs(f)...) }
func (g *logger) Info(msg string, f glog.Fields) {
	lvl := slog.LevelDebug
	if msg == "Peer Up" || msg == "Peer Down" || msg == "peer is down" {
		lvl = slog.LevelInfo
	}
	g.l.Log(context.Background(), lvl, msg, attrs(f)...)
}
func (g *logger) Debug(msg string, f glog.Fields) { g.l.Debug(msg, attrs(f)...) }
func (g *logger) SetLevel(level glog.LogLevel)    { g.level = level }
func (g *logger) GetLevel() glog.LogLevel         { return glog.DebugLevel }
