package apiserver

import (
	"net/http"

	"github.com/xlb-dev/xlb/api"
)

// The BGP handlers: /v1/bgp (global settings and status) and
// /v1/bgp/peers (neighbors). Validation and state live in BGPCore.

// bgpCore returns the BGP core or writes 503 when this server has none.
func (s *Server) bgpCore(w http.ResponseWriter, r *http.Request) BGPCore {
	if err := checkQuery(r); err != nil {
		writeError(w, err)
		return nil
	}
	if s.bgp == nil {
		writeError(w, &api.Error{Code: api.CodeUnavailable, Message: "BGP is not available in this daemon"})
		return nil
	}
	return s.bgp
}

func (s *Server) getBGP(w http.ResponseWriter, r *http.Request) {
	b := s.bgpCore(w, r)
	if b == nil {
		return
	}
	st, err := b.GetBGP(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) putBGP(w http.ResponseWriter, r *http.Request) {
	b := s.bgpCore(w, r)
	if b == nil {
		return
	}
	var g api.BGPGlobal
	if err := readBody(w, r, MaxBodyBytes, &g); err != nil {
		writeError(w, err)
		return
	}
	out, err := b.PutBGP(r.Context(), g)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) deleteBGP(w http.ResponseWriter, r *http.Request) {
	b := s.bgpCore(w, r)
	if b == nil {
		return
	}
	if err := b.DeleteBGP(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listBGPPeers(w http.ResponseWriter, r *http.Request) {
	b := s.bgpCore(w, r)
	if b == nil {
		return
	}
	list, err := b.ListBGPPeers(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) replaceBGPPeers(w http.ResponseWriter, r *http.Request) {
	b := s.bgpCore(w, r)
	if b == nil {
		return
	}
	var req api.BGPPeerReplace
	if err := readBody(w, r, MaxBodyBytes, &req); err != nil {
		writeError(w, err)
		return
	}
	list, err := b.ReplaceBGPPeers(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) putBGPPeer(w http.ResponseWriter, r *http.Request) {
	b := s.bgpCore(w, r)
	if b == nil {
		return
	}
	var p api.BGPPeer
	if err := readBody(w, r, MaxBodyBytes, &p); err != nil {
		writeError(w, err)
		return
	}
	out, created, err := b.PutBGPPeer(r.Context(), r.PathValue("address"), p)
	if err != nil {
		writeError(w, err)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	writeJSON(w, code, out)
}

func (s *Server) deleteBGPPeer(w http.ResponseWriter, r *http.Request) {
	b := s.bgpCore(w, r)
	if b == nil {
		return
	}
	if err := b.DeleteBGPPeer(r.Context(), r.PathValue("address")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
