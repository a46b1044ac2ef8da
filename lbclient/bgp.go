package lbclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/xlb-dev/xlb/api"
)

// GetBGP returns the BGP status: global settings (nil while BGP is off),
// peers with their session state, announced host routes.
func (c *Client) GetBGP(ctx context.Context) (api.BGPStatus, error) {
	r := request{method: http.MethodGet, path: "/v1/bgp"}
	resp, err := c.do(ctx, r)
	if err != nil {
		return api.BGPStatus{}, err
	}
	var out api.BGPStatus
	return out, decodeJSON(r, resp, &out)
}

// PutBGP configures (or reconfigures) the BGP speaker.
func (c *Client) PutBGP(ctx context.Context, g api.BGPGlobal) (api.BGPGlobal, error) {
	body, err := json.Marshal(g)
	if err != nil {
		return api.BGPGlobal{}, fmt.Errorf("put bgp: encode: %w", err)
	}
	r := request{method: http.MethodPut, path: "/v1/bgp", body: body}
	resp, err := c.do(ctx, r)
	if err != nil {
		return api.BGPGlobal{}, err
	}
	var out api.BGPGlobal
	return out, decodeJSON(r, resp, &out)
}

// DeleteBGP stops BGP: routes withdrawn, sessions closed with a
// NOTIFICATION; the peers stay configured.
func (c *Client) DeleteBGP(ctx context.Context) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: "/v1/bgp"})
	return err
}

// ListBGPPeers returns the configured peers with their session state.
func (c *Client) ListBGPPeers(ctx context.Context) (api.BGPPeerList, error) {
	r := request{method: http.MethodGet, path: "/v1/bgp/peers"}
	resp, err := c.do(ctx, r)
	if err != nil {
		return api.BGPPeerList{}, err
	}
	var out api.BGPPeerList
	return out, decodeJSON(r, resp, &out)
}

// PutBGPPeers replaces the full peer set.
func (c *Client) PutBGPPeers(ctx context.Context, peers []api.BGPPeer) (api.BGPPeerList, error) {
	if peers == nil {
		peers = []api.BGPPeer{}
	}
	body, err := json.Marshal(api.BGPPeerReplace{Items: peers})
	if err != nil {
		return api.BGPPeerList{}, fmt.Errorf("put bgp peers: encode: %w", err)
	}
	r := request{method: http.MethodPut, path: "/v1/bgp/peers", body: body}
	resp, err := c.do(ctx, r)
	if err != nil {
		return api.BGPPeerList{}, err
	}
	var out api.BGPPeerList
	return out, decodeJSON(r, resp, &out)
}

func peerPath(address string) (string, error) {
	if address == "" {
		return "", errors.New("peer address is empty")
	}
	return "/v1/bgp/peers/" + url.PathEscape(address), nil
}

// PutBGPPeer creates or replaces the peer p.Address (the whole peer: an
// empty password means no MD5). created is true for HTTP 201.
func (c *Client) PutBGPPeer(ctx context.Context, p api.BGPPeer) (api.BGPPeerStatus, bool, error) {
	path, err := peerPath(p.Address)
	if err != nil {
		return api.BGPPeerStatus{}, false, fmt.Errorf("put bgp peer: %w", err)
	}
	body, err := json.Marshal(p)
	if err != nil {
		return api.BGPPeerStatus{}, false, fmt.Errorf("put bgp peer %s: encode: %w", p.Address, err)
	}
	r := request{method: http.MethodPut, path: path, body: body}
	resp, err := c.do(ctx, r)
	if err != nil {
		return api.BGPPeerStatus{}, false, err
	}
	var out api.BGPPeerStatus
	if err := decodeJSON(r, resp, &out); err != nil {
		return api.BGPPeerStatus{}, false, err
	}
	return out, resp.StatusCode() == http.StatusCreated, nil
}

// DeleteBGPPeer removes one peer; IsNotFound(err) when it was not configured.
func (c *Client) DeleteBGPPeer(ctx context.Context, address string) error {
	path, err := peerPath(address)
	if err != nil {
		return fmt.Errorf("delete bgp peer: %w", err)
	}
	_, err = c.do(ctx, request{method: http.MethodDelete, path: path})
	return err
}
