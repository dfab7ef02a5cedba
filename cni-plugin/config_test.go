package cniplugin

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

func TestBadInputGivesCNIErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nexthop.sock")
	for _, tc := range []struct {
		name  string
		stdin []byte
		args  string
		code  uint
		field string
	}{
		{"not json", []byte("{"), "", types.ErrDecodingFailure, "decode network config"},
		{"mtu wrong type", netConf(t, sock, map[string]any{"mtu": "big"}), "", types.ErrDecodingFailure, "mtu"},
		{"mtu too small", netConf(t, sock, map[string]any{"mtu": 10}), "", types.ErrInvalidNetworkConfig, "mtu"},
		{"mtu too big", netConf(t, sock, map[string]any{"mtu": 70000}), "", types.ErrInvalidNetworkConfig, "mtu"},
		{"relative socket", netConf(t, "run/x.sock", nil), "", types.ErrInvalidNetworkConfig, "ipamSocket"},
		{"relative pending-release dir", netConf(t, sock, map[string]any{"pendingReleaseDir": "pending"}), "", types.ErrInvalidNetworkConfig, "pendingReleaseDir"},
		{"pending-release dir wrong type", netConf(t, sock, map[string]any{"pendingReleaseDir": 7}), "", types.ErrDecodingFailure, "pendingReleaseDir"},
		{"ipam section", netConf(t, sock, map[string]any{"ipam": map[string]any{"type": "host-local"}}), "", types.ErrInvalidNetworkConfig, "ipam"},
		{"log level", netConf(t, sock, map[string]any{"logLevel": "loud"}), "", types.ErrInvalidNetworkConfig, "logLevel"},
		{"bad prevResult", netConf(t, sock, map[string]any{"prevResult": map[string]any{"ips": "x"}}), "", types.ErrDecodingFailure, "prevResult"},
		{"bad CNI_ARGS", netConf(t, sock, nil), "K8S_POD_NAME", types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"missing netns", netConf(t, sock, nil), "", types.ErrInvalidNetNS, "CNI_NETNS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := &skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/nhc-missing-" + randSuffix(), IfName: "eth0", Args: tc.args, StdinData: tc.stdin}
			te := cniCode(t, Add(context.Background(), args))
			if te.Code != tc.code || !strings.Contains(te.Msg, tc.field) {
				t.Fatalf("got code %d %q, want code %d naming %q", te.Code, te.Msg, tc.code, tc.field)
			}
		})
	}
}

// DEL is the exception: see TestDelWithDaemonDown.
func TestDaemonUnreachableIsTryAgainLater(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nexthop.sock")
	gc := &skel.CmdArgs{StdinData: netConf(t, sock, map[string]any{"cni.dev/valid-attachments": []any{}})}
	te := cniCode(t, GC(context.Background(), gc))
	if te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, sock) {
		t.Errorf("GC: code %d %q, want 11 naming %s", te.Code, te.Msg, sock)
	}
	te = cniCode(t, Status(context.Background(), gc))
	if te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, sock) {
		t.Errorf("STATUS: code %d %q, want 50 naming %s", te.Code, te.Msg, sock)
	}
	t.Run("ADD", func(t *testing.T) {
		requireRoot(t)
		// A pod netns that is not ours: ADD fails at IPAM before touching it.
		pod := newNetNS(t, "pod")
		args := &skel.CmdArgs{ContainerID: "c1", Netns: pod.Path(), IfName: "eth0", StdinData: netConf(t, sock, nil)}
		te := cniCode(t, Add(context.Background(), args))
		if te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, sock) {
			t.Errorf("ADD: code %d %q, want 11 naming %s", te.Code, te.Msg, sock)
		}
	})
}
