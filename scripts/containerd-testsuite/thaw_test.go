// containerd's snapshotter test suite (snapshots/testsuite, containerd 1.6) run against
// `thaw snapshotter serve` through containerd's proxy snapshotter: each subtest starts a
// fresh snapshotter on its own root. Run by scripts/containerd-testsuite.sh.
package thawsuite

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func newThaw(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	socket := filepath.Join(root, "thaw.sock")
	cmd := exec.Command(os.Getenv("THAW_BIN"), "snapshotter", "serve",
		"--socket", socket, "--root", filepath.Join(root, "state"))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	conn, err := grpc.Dial("unix://"+socket, grpc.WithInsecure())
	if err != nil {
		cmd.Process.Kill()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "thaw")
	return sn, func() error {
		sn.Close()
		conn.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return nil
	}, nil
}

func TestThawSnapshotter(t *testing.T) {
	if os.Getenv("THAW_BIN") == "" {
		t.Skip("THAW_BIN is not set")
	}
	testsuite.SnapshotterSuite(t, "thaw", newThaw)
}
