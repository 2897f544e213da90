package initboot

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/images/verity"
)

// testImage is a disk made with images/disk holding a real root image (random data + verity tree).
type testImage struct {
	rootHash   []byte
	hashOffset int64
	partUUID   string
	devPath    string
	rootImg    string // the root image file (for more disks carrying it)
}

const (
	mib      = 1 << 20
	dataSize = 2 * mib
)

// makeDisk writes root/dev/<name>: GPT with esp, root-a (a verity image), root-b, state, and a fake
// sysfs for it under root/sys/block/<name> (partition device names name+sep+N).
func makeDisk(t *testing.T, root, name, sep string) *testImage {
	t.Helper()
	img := makeRootImage(t)
	writeDisk(t, root, name, sep, "A1111111-2222-3333-4444-555555555555", img)
	return img
}

// makeRootImage writes a root image (random data + verity tree) into a temporary folder.
func makeRootImage(t *testing.T) *testImage {
	t.Helper()
	rootImg := filepath.Join(t.TempDir(), "root.img")
	data := make([]byte, dataSize)
	rand.Read(data)
	if err := os.WriteFile(rootImg, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(rootImg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := verity.Build(f, f, dataSize, dataSize, verity.Params{Salt: []byte("salty")}, 1, nil)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	uuid, _ := images.RootPartUUID(tree.RootHash)
	return &testImage{rootHash: tree.RootHash, hashOffset: dataSize, partUUID: uuid, rootImg: rootImg}
}

// writeDisk writes the disk root/dev/<name> holding img in root-a, with the ESP's partition GUID
// espGUID, and sets img.devPath to it.
func writeDisk(t *testing.T, root, name, sep, espGUID string, img *testImage) {
	t.Helper()
	devPath := filepath.Join(root, "dev", name)
	if err := os.MkdirAll(filepath.Dir(devPath), 0o755); err != nil {
		t.Fatal(err)
	}
	err := disk.Write(devPath, disk.Layout{
		Size:     40 * mib,
		DiskGUID: "11111111-2222-3333-4444-555555555555",
		Partitions: []disk.Partition{
			{Name: images.PartESP, Type: images.TypeESP, GUID: espGUID, Size: 8 * mib},
			{Name: images.PartRootA, Type: images.TypeRootX86_64, GUID: img.partUUID, Size: 4 * mib, Content: img.rootImg},
			{Name: images.PartRootB, Type: images.TypeRootX86_64, GUID: "B1111111-2222-3333-4444-555555555555", Size: 4 * mib},
			{Name: images.PartState, Type: images.TypeLinuxData, GUID: "C1111111-2222-3333-4444-555555555555", Size: 20 * mib},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sys := filepath.Join(root, "sys/block", name)
	for i := 1; i <= 4; i++ {
		writeFile(t, filepath.Join(sys, name+sep+strconv.Itoa(i), "partition"), strconv.Itoa(i)+"\n")
	}
	writeFile(t, filepath.Join(sys, "size"), strconv.Itoa(40*mib/512)+"\n")
	img.devPath = devPath
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
