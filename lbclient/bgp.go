package lbclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/xlb-dev/xlb/api"
)

// GetBGP returns the BGP status: global settings (nil while BGP is off),
// peers with their session state, announced host routes.
func (c *Client) GetBGP(ctx context.Context) (api.BGPStatus, error) {
	out, _, err := call[api.BGPStatus](ctx, c, http.MethodGet, "/v1/bgp", nil, nil, "get bgp")
	return out, err
}

// PutBGP configures (or reconfigures) the BGP speaker.
func (c *Client) PutBGP(ctx context.Context, g api.BGPGlobal) (api.BGPGlobal, error) {
	out, _, err := call[api.BGPGlobal](ctx, c, http.MethodPut, "/v1/bgp", nil, g, "put bgp")
	return out, err
}

// DeleteBGP stops BGP: routes withdrawn, sessions closed with a
// NOTIFICATION; the peers stay configured.
func (c *Client) DeleteBGP(ctx context.Context) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: "/v1/bgp"})
	return err
}

// ListBGPPeers returns the configured peers with their session state.
func (c *Client) ListBGPPeers(ctx context.Context) (api.BGPPeerList, error) {
	out, _, err := call[api.BGPPeerList](ctx, c, http.MethodGet, "/v1/bgp/peers", nil, nil, "list bgp peers")
	return out, err
}

// PutBGPPeers replaces the full peer set.
func (c *Client) PutBGPPeers(ctx context.Context, peers []api.BGPPeer) (api.BGPPeerList, error) {
	if peers == nil {
		peers = []api.BGPPeer{}
	}
	out, _, err := call[api.BGPPeerList](ctx, c, http.MethodPut, "/v1/bgp/peers", nil, api.BGPPeerReplace{Items: peers}, "put bgp peers")
	return out, err
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
	return call[api.BGPPeerStatus](ctx, c, http.MethodPut, path, nil, p, "put bgp peer "+p.Address)
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
