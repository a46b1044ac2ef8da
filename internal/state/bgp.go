package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/xlb-dev/xlb/api"
)

// BGPFileName is the BGP configuration file inside the state directory. It
// is a file of its own so that a service change never rewrites the BGP
// configuration (and the other way round).
const BGPFileName = "bgp.json"

// BGPConfig is the persisted BGP configuration. Peer passwords are stored
// in clear text: the file is 0600 in a 0700 directory, like the token file.
type BGPConfig struct {
	// Global is nil while BGP is not configured.
	Global *api.BGPGlobal
	Peers  []api.BGPPeer
}

type bgpFile struct {
	FormatVersion int            `json:"formatVersion"`
	SavedAt       time.Time      `json:"savedAt"`
	Global        *api.BGPGlobal `json:"global,omitempty"`
	Peers         []api.BGPPeer  `json:"peers"`
}

// BGPPath is the full path of the BGP configuration file.
func (s *Store) BGPPath() string { return filepath.Join(s.dir, BGPFileName) }

// LoadBGP reads the BGP configuration; a missing file is an empty
// configuration, a corrupt one is moved aside (like Load).
func (s *Store) LoadBGP(ctx context.Context) (BGPConfig, error) {
	if err := ctx.Err(); err != nil {
		return BGPConfig{}, err
	}
	path := s.BGPPath()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return BGPConfig{}, nil
	}
	if err != nil {
		return BGPConfig{}, fmt.Errorf("state: read %s: %w", path, err)
	}
	var f bgpFile
	if err := json.Unmarshal(data, &f); err != nil || f.FormatVersion == 0 {
		if err == nil {
			err = errors.New("missing formatVersion")
		}
		return BGPConfig{}, s.quarantine(path, err)
	}
	if f.FormatVersion > FormatVersion {
		return BGPConfig{}, fmt.Errorf("state: %s has format version %d, this xlbd reads up to %d (downgrade?): move the file away to start without BGP", path, f.FormatVersion, FormatVersion)
	}
	return BGPConfig{Global: f.Global, Peers: f.Peers}, nil
}

// SaveBGP writes the BGP configuration atomically.
func (s *Store) SaveBGP(ctx context.Context, c BGPConfig) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	peers := c.Peers
	if peers == nil {
		peers = []api.BGPPeer{}
	}
	data, err := json.MarshalIndent(bgpFile{FormatVersion: FormatVersion, SavedAt: s.now().UTC(), Global: c.Global, Peers: peers}, "", "  ")
	if err != nil {
		return fmt.Errorf("state: encode bgp: %w", err)
	}
	return writeAtomic(s.dir, BGPFileName, append(data, '\n'))
}
