package netns

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Bulk transfers: one TCP connection moves a large stream of a fixed pattern
// in one direction, and the receiving end compares every byte with the
// pattern at its offset, so a loss, a duplicate, a reordering or a rewrite of
// payload bytes shows up as the offset of the first wrong byte.
//
// Protocol on the connection (client first): one byte BulkUp or BulkDown and
// the stream size as a big-endian uint64. Up: the client sends size pattern
// bytes and half-closes; the server answers with two uint64, the number of
// bytes it received and the offset of the first wrong byte (^0: none).
// Down: the server sends size pattern bytes and closes.

// BulkDir is the direction of a bulk transfer.
type BulkDir byte

const (
	BulkUp   BulkDir = 'U' // client → server (an upload)
	BulkDown BulkDir = 'D' // server → client (a download)
)

func (d BulkDir) String() string {
	if d == BulkUp {
		return "up"
	}
	return "down"
}

// bulkPeriod is the pattern's period: odd, so a segment delivered at a
// multiple of any power-of-two size away from its place never matches.
const bulkPeriod = 1<<20 + 7

// bulkChunk is the unit of a write and of a read-and-compare.
const bulkChunk = 256 << 10

var bulkPattern = sync.OnceValue(func() []byte {
	// Twice the period, so the window of any offset is one contiguous slice.
	p := make([]byte, 2*bulkPeriod)
	r := rand.New(rand.NewPCG(9, 1)) // deterministic: both ends agree
	for i := 0; i < bulkPeriod; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(p[i:min(i+8, bulkPeriod)], w[:])
	}
	copy(p[bulkPeriod:], p[:bulkPeriod])
	return p
})

// patternAt returns the n (≤ bulkChunk) pattern bytes at stream offset off.
func patternAt(off int64, n int) []byte {
	s := int(off % bulkPeriod)
	return bulkPattern()[s : s+n]
}

// bulkSend writes size pattern bytes; each write must complete within stall.
func bulkSend(c net.Conn, size int64, stall time.Duration, deadline time.Time) (int64, error) {
	var sent int64
	for sent < size {
		n := int(min(size-sent, bulkChunk))
		_ = c.SetWriteDeadline(earliest(time.Now().Add(stall), deadline))
		w, err := c.Write(patternAt(sent, n))
		sent += int64(w)
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// bulkReceive reads up to size bytes (and then expects EOF when wantEOF),
// comparing them with the pattern. It returns the bytes read and the offset
// of the first wrong byte (-1: none). Each read must progress within stall.
func bulkReceive(c net.Conn, size int64, stall time.Duration, deadline time.Time, wantEOF bool) (got, bad int64, err error) {
	buf := make([]byte, bulkChunk)
	bad = -1
	for got < size {
		n := int(min(size-got, bulkChunk))
		_ = c.SetReadDeadline(earliest(time.Now().Add(stall), deadline))
		r, err := c.Read(buf[:n])
		if r > 0 {
			if bad < 0 && !bytes.Equal(buf[:r], patternAt(got, r)) {
				for i := range r {
					if buf[i] != patternAt(got+int64(i), 1)[0] {
						bad = got + int64(i)
						break
					}
				}
			}
			got += int64(r)
		}
		if err != nil {
			return got, bad, err
		}
	}
	if wantEOF {
		_ = c.SetReadDeadline(earliest(time.Now().Add(stall), deadline))
		if r, err := c.Read(buf[:1]); r > 0 || !errors.Is(err, io.EOF) {
			return got + int64(r), bad, fmt.Errorf("after %d bytes: want EOF, got %d more bytes (%v)", got, r, err)
		}
	}
	return got, bad, nil
}

func earliest(a, b time.Time) time.Time {
	if !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// ServeBulk serves bulk transfers on [::]:port until the test ends.
func (h *Host) ServeBulk(t testing.TB, port uint16) {
	t.Helper()
	h.ServeTCP(t, port, serveBulkConn)
}

// bulkServerStall bounds how long the server waits for progress; the client
// applies its own, usually shorter, bound.
const bulkServerStall = 2 * time.Minute

func serveBulkConn(c net.Conn) {
	var hdr [9]byte
	_ = c.SetReadDeadline(time.Now().Add(bulkServerStall))
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	size := int64(binary.BigEndian.Uint64(hdr[1:]))
	switch BulkDir(hdr[0]) {
	case BulkUp:
		got, bad, err := bulkReceive(c, size, bulkServerStall, time.Time{}, true)
		if err != nil {
			return // the client sees the connection close without a verdict
		}
		var res [16]byte
		binary.BigEndian.PutUint64(res[:8], uint64(got))
		binary.BigEndian.PutUint64(res[8:], uint64(bad))
		_ = c.SetWriteDeadline(time.Now().Add(bulkServerStall))
		_, _ = c.Write(res[:])
	case BulkDown:
		_, _ = bulkSend(c, size, bulkServerStall, time.Time{})
	}
}

// BulkResult is what a bulk transfer achieved.
type BulkResult struct {
	Dir      BulkDir
	Size     int64         // requested
	Done     int64         // bytes the receiving end got
	BadAt    int64         // offset of the first wrong byte, -1 when none
	Elapsed  time.Duration // from connect to verdict
	Backend  netip.AddrPort
	Upstream string // local address of the client's connection
}

// Bulk connects from the namespace to target (a ServeBulk server, possibly
// through a VIP) and moves size bytes in direction dir. It fails when the
// stream makes no progress for stall, when the whole transfer takes longer
// than ctx allows, when the connection breaks, or when the received bytes
// differ from the pattern; the result says how far it got either way.
func (n *NS) Bulk(ctx context.Context, target netip.AddrPort, dir BulkDir, size int64, stall time.Duration) (BulkResult, error) {
	res := BulkResult{Dir: dir, Size: size, BadAt: -1}
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, stall)
	c, err := n.DialContext(dctx, "tcp", target.String())
	cancel()
	if err != nil {
		return res, fmt.Errorf("bulk %s %s: connect: %w", dir, target, err)
	}
	defer c.Close()
	res.Upstream = c.LocalAddr().String()
	deadline, _ := ctx.Deadline()
	var hdr [9]byte
	hdr[0] = byte(dir)
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	_ = c.SetWriteDeadline(earliest(time.Now().Add(stall), deadline))
	if _, err := c.Write(hdr[:]); err != nil {
		return res, fmt.Errorf("bulk %s %s: header: %w", dir, target, err)
	}
	switch dir {
	case BulkUp:
		sent, err := bulkSend(c, size, stall, deadline)
		if err != nil {
			return res, fmt.Errorf("bulk up %s: %s after %d of %d bytes sent: %w", target, classify(err), sent, size, err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return res, fmt.Errorf("bulk up %s: half-close: %w", target, err)
		}
		// The server answers once it has read everything: wait for the
		// verdict as long as the stream would have been allowed to stall.
		var v [16]byte
		_ = c.SetReadDeadline(earliest(time.Now().Add(stall), deadline))
		if _, err := io.ReadFull(c, v[:]); err != nil {
			return res, fmt.Errorf("bulk up %s: %s waiting for the server's verdict after sending all %d bytes: %w", target, classify(err), size, err)
		}
		res.Done = int64(binary.BigEndian.Uint64(v[:8]))
		res.BadAt = int64(binary.BigEndian.Uint64(v[8:]))
	case BulkDown:
		got, bad, err := bulkReceive(c, size, stall, deadline, true)
		res.Done, res.BadAt = got, bad
		if err != nil {
			return res, fmt.Errorf("bulk down %s: %s after %d of %d bytes received: %w", target, classify(err), got, size, err)
		}
	default:
		return res, fmt.Errorf("bulk: unknown direction %q", dir)
	}
	res.Elapsed = time.Since(start)
	if res.BadAt >= 0 {
		return res, fmt.Errorf("bulk %s %s: corrupted stream: first wrong byte at offset %d of %d", dir, target, res.BadAt, size)
	}
	if res.Done != size {
		return res, fmt.Errorf("bulk %s %s: %d of %d bytes arrived", dir, target, res.Done, size)
	}
	return res, nil
}

// classify names a transfer error the way a report needs it: a stall (no
// progress within the bound), a reset, or an early close.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "stall"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "early close"
	case isReset(err):
		return "reset"
	}
	return "error"
}

func isReset(err error) bool {
	return errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}
