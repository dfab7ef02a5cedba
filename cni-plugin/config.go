package cniplugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nexthop-net/nexthop/ipam"
)

// Defaults for fields left out of the network config.
const (
	// DefaultMTU is the pod MTU when neither the network config nor the
	// daemon sets one.
	DefaultMTU        = 1500
	DefaultIPAMSocket = "/run/nexthop/nexthop.sock"
	// DefaultPendingReleaseDir is where the daemon, with its default state
	// dir (/var/lib/nexthop), looks for releases DEL could not make.
	DefaultPendingReleaseDir = "/var/lib/nexthop/" + ipam.PendingReleaseDirName
	// MaxStdin caps the network config a runtime may send: a real one is a
	// few KiB (a GC list of every pod on the node included), and reading
	// an unbounded stdin lets any caller make the plugin use any amount of
	// memory.
	MaxStdin = 4 << 20
)

// Plugin-specific CNI error codes (the spec leaves 100+ to plugins).
const (
	// ErrBlockExhausted: the node block has no free address.
	ErrBlockExhausted uint = 100
	// ErrStaleAllocation: the attachment holds an address from a previous
	// node block; it must be deleted (CNI DEL) before it can be re-added.
	ErrStaleAllocation uint = 101
	// ErrCheckFailed: CHECK found the attachment differs from what ADD made.
	ErrCheckFailed uint = 102
)

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.PluginConf
	// MTU of both veth ends. 0 (left out) means the daemon's pod MTU, which
	// it derives from the underlay and the encapsulation in force, or
	// DefaultMTU when the daemon does not report one; see podMTU.
	MTU int `json:"mtu,omitempty"`
	// IPAMSocket is the node daemon's IPAM socket.
	IPAMSocket string `json:"ipamSocket,omitempty"`
	// PendingReleaseDir is where DEL records an address release when the
	// daemon cannot be reached, for the daemon to make when it is back: the
	// "pending-release" directory in the daemon's state dir. It must survive
	// a reboot (not under /run).
	PendingReleaseDir string `json:"pendingReleaseDir,omitempty"`
	// LogLevel for the plugin's stderr: debug, info, warn (default), error.
	LogLevel string `json:"logLevel,omitempty"`
}

// k8sArgs are the CNI_ARGS kubelet passes; all optional.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// parseConfig decodes, defaults and validates stdin; every error is a CNI
// error whose message names the offending field.
func parseConfig(stdin []byte) (*NetConf, *types.Error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	bad := func(field, format string, a ...any) *types.Error {
		return types.NewError(types.ErrInvalidNetworkConfig, field+": "+fmt.Sprintf(format, a...), "")
	}
	if conf.IPAM.Type != "" {
		return nil, bad("ipam", "nexthop allocates addresses from its node daemon; remove the ipam section (type %q)", conf.IPAM.Type)
	}
	if conf.MTU != 0 && (conf.MTU < ipam.MinMTU || conf.MTU > ipam.MaxMTU) {
		return nil, bad("mtu", "%d is out of range %d-%d", conf.MTU, ipam.MinMTU, ipam.MaxMTU)
	}
	if conf.IPAMSocket == "" {
		conf.IPAMSocket = DefaultIPAMSocket
	}
	if !filepath.IsAbs(conf.IPAMSocket) {
		return nil, bad("ipamSocket", "%q is not an absolute path", conf.IPAMSocket)
	}
	if conf.PendingReleaseDir == "" {
		conf.PendingReleaseDir = DefaultPendingReleaseDir
	}
	if !filepath.IsAbs(conf.PendingReleaseDir) {
		return nil, bad("pendingReleaseDir", "%q is not an absolute path", conf.PendingReleaseDir)
	}
	conf.PendingReleaseDir = filepath.Clean(conf.PendingReleaseDir)
	if _, err := parseLevel(conf.LogLevel); err != nil {
		return nil, bad("logLevel", "%v", err)
	}
	return conf, nil
}

// podMTU is the MTU for a new attachment given the daemon's pod MTU (0 when
// it does not say), and where it came from: an explicit mtu in the network
// config wins, then the daemon, then DefaultMTU.
func (c *NetConf) podMTU(daemonMTU int) (mtu int, source string) {
	switch {
	case c.MTU != 0:
		return c.MTU, "network config"
	case daemonMTU != 0:
		return daemonMTU, "daemon"
	}
	return DefaultMTU, "default"
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "warn":
		return slog.LevelWarn, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
}

// logger writes to stderr, which runtimes keep in their own logs; stdout
// belongs to the CNI result.
func (c *NetConf) logger() *slog.Logger {
	lvl, _ := parseLevel(c.LogLevel)
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("plugin", "nexthop", "network", c.Name)
}

func parseArgs(s string) (*k8sArgs, *types.Error) {
	a := &k8sArgs{}
	a.IgnoreUnknown = true // runtimes pass keys for other plugins too
	if err := types.LoadArgs(s, a); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS: %v", err), "")
	}
	return a, nil
}

// ValidAttachmentsKey is where the runtime lists, for GC, the attachments
// still in use (CNI spec 1.1, section 2).
const ValidAttachmentsKey = "cni.dev/valid-attachments"

// validAttachments reads GC's list of attachments still in use. GC releases
// every allocation not in it, so a list that is missing or null is refused
// (ErrInvalidNetworkConfig) instead of being read as "none": that would free
// live pods' addresses for the next ADD to hand out again. An empty array is
// a real "none". The key is matched exactly, unlike encoding/json's
// case-insensitive match into PluginConf.ValidAttachments.
func validAttachments(stdin []byte) ([]ipam.Attachment, *types.Error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &top); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	raw, ok := top[ValidAttachmentsKey]
	if raw = bytes.TrimSpace(raw); !ok || len(raw) == 0 || string(raw) == "null" {
		what := "missing"
		if ok {
			what = "null"
		}
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(
			"%s: %s; GC needs the list of attachments still in use ([] for none), nothing released", ValidAttachmentsKey, what), "")
	}
	var list []types.GCAttachment
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("%s: %v; nothing released", ValidAttachmentsKey, err), "")
	}
	valid := make([]ipam.Attachment, 0, len(list))
	for i, a := range list {
		if a.ContainerID == "" || a.IfName == "" {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(
				"%s[%d]: containerID and ifname are both required (got %q, %q); nothing released", ValidAttachmentsKey, i, a.ContainerID, a.IfName), "")
		}
		valid = append(valid, ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	return valid, nil
}
