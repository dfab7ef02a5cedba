package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
)

// bbolt trusts its file: a page id past the end of a truncated file is a
// SIGBUS in the mmap, a garbage freelist page a panic. verifyStore walks the
// file's bytes with bounds checks first, the way bbolt will read them, so
// that bbolt only ever opens a file it can read. The layout is bbolt's
// on-disk format (go.etcd.io/bbolt/internal/common, stable since boltdb),
// in the host's byte order as bbolt writes it.

// CorruptError means the store file cannot be read as a bbolt database. The
// daemon exits with it (a runtime failure) rather than start afresh while
// pods hold addresses.
type CorruptError struct {
	Path   string
	Detail string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("IPAM store corrupt: %s: %s", e.Path, e.Detail)
}

const (
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	pageHeaderSize  = 16
	elementSize     = 16 // branch and leaf page elements are both 16 bytes
	metaSize        = 64
	metaChecksumOff = 56
	bucketHeader    = 16 // root pgid + sequence, before an inline bucket's page
	noFreelist      = ^uint64(0)

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10
	leafBucket   = 0x01

	// maxDepth bounds the tree walk: a real store is a few levels deep.
	maxDepth = 64
)

var ne = binary.NativeEndian

type boltMeta struct {
	magic, version, pageSize uint32
	root, freelist, pgid     uint64
	txid, checksum           uint64
}

// parseMeta reads the meta at the start of page at off; err says why it is
// not valid (bbolt's Validate: magic, version, checksum; and the page
// header bbolt asserts).
func parseMeta(data []byte, off int) (boltMeta, error) {
	if off < 0 || off+pageHeaderSize+metaSize > len(data) {
		return boltMeta{}, errors.New("beyond the end of the file")
	}
	if id, flags := ne.Uint64(data[off:]), ne.Uint16(data[off+8:]); flags != flagMeta || (id != 0 && id != 1) {
		return boltMeta{}, fmt.Errorf("page header (id %d, flags %#x) is not a meta page's", id, flags)
	}
	b := data[off+pageHeaderSize : off+pageHeaderSize+metaSize]
	m := boltMeta{
		magic: ne.Uint32(b[0:]), version: ne.Uint32(b[4:]), pageSize: ne.Uint32(b[8:]),
		root: ne.Uint64(b[16:]), freelist: ne.Uint64(b[32:]), pgid: ne.Uint64(b[40:]),
		txid: ne.Uint64(b[48:]), checksum: ne.Uint64(b[56:]),
	}
	h := fnv.New64a()
	h.Write(b[:metaChecksumOff])
	switch {
	case m.magic != boltMagic:
		return m, errors.New("no bbolt magic number")
	case m.version != boltVersion:
		return m, fmt.Errorf("format version %d, want %d", m.version, boltVersion)
	case m.checksum != h.Sum64():
		return m, errors.New("checksum mismatch")
	}
	return m, nil
}

// storeCheck is what verifyStore learned of a readable file.
type storeCheck struct {
	// damagedMeta, if set, says which meta page is unreadable while the
	// other is fine: bbolt silently opens the older state, and the last
	// committed change may be lost.
	damagedMeta string
	// damagedSlot is that meta page's number (0 or 1), -1 if none.
	damagedSlot int
	pageSize    int
	txid        uint64
}

// verifyStore checks a non-empty store file. An error (a *CorruptError
// without Path) means bbolt must not open it.
func verifyStore(data []byte) (storeCheck, error) {
	sc := storeCheck{damagedSlot: -1}
	bad := func(format string, a ...any) (storeCheck, error) {
		return sc, &CorruptError{Detail: fmt.Sprintf(format, a...)}
	}
	// The page size comes from the first valid meta, as bbolt finds it:
	// page 0 first, else page 1 at every page size bbolt supports.
	m0, err0 := parseMeta(data, 0)
	pageSize := 0
	if err0 == nil {
		pageSize = int(m0.pageSize)
	} else {
		for i := range 15 {
			pos := 1024 << i
			if m, err := parseMeta(data, pos); err == nil && int(m.pageSize) == pos {
				pageSize = pos
				break
			}
		}
	}
	if pageSize < 1024 || pageSize > 1<<24 || pageSize&(pageSize-1) != 0 {
		if err0 != nil {
			return bad("%d bytes and no valid meta page (page 0: %v)", len(data), err0)
		}
		return bad("meta page 0 gives page size %d", pageSize)
	}
	m1, err1 := parseMeta(data, pageSize)
	if err0 == nil && ne.Uint64(data) != 0 {
		err0 = fmt.Errorf("page header says page %d", ne.Uint64(data))
	}
	if err1 == nil && ne.Uint64(data[pageSize:]) != 1 {
		err1 = fmt.Errorf("page header says page %d", ne.Uint64(data[pageSize:]))
	}
	sc.pageSize = pageSize
	for i, e := range []error{err0, err1} {
		if e == nil && []boltMeta{m0, m1}[i].pageSize != uint32(pageSize) {
			return bad("meta pages disagree on the page size (%d, %d)", m0.pageSize, m1.pageSize)
		}
	}
	var m boltMeta
	switch {
	case err0 != nil && err1 != nil:
		return bad("no valid meta page (page 0: %v; page 1: %v)", err0, err1)
	case err0 != nil:
		m, sc.damagedSlot, sc.damagedMeta = m1, 0, fmt.Sprintf("meta page 0 is invalid (%v); opened at meta page 1, transaction %d", err0, m1.txid)
	case err1 != nil:
		m, sc.damagedSlot, sc.damagedMeta = m0, 1, fmt.Sprintf("meta page 1 is invalid (%v); opened at meta page 0, transaction %d", err1, m0.txid)
	case m1.txid > m0.txid:
		m = m1
	default:
		m = m0
	}
	sc.txid = m.txid
	ps := uint64(pageSize)
	switch {
	case m.pgid < 2 || m.pgid > uint64(len(data))/ps:
		// Also what keeps bbolt's mmap reads inside the file (no SIGBUS).
		return bad("file is %d bytes, but its meta page (transaction %d) says %d pages of %d bytes: truncated?",
			len(data), m.txid, m.pgid, pageSize)
	case m.root < 2 || m.root >= m.pgid:
		return bad("root page %d outside 2-%d", m.root, m.pgid-1)
	case m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.pgid):
		return bad("freelist page %d outside 2-%d", m.freelist, m.pgid-1)
	}

	w := &walker{data: data, ps: pageSize, hwm: m.pgid, reach: map[uint64]bool{0: true, 1: true}, freed: map[uint64]bool{}}
	if m.freelist != noFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return bad("%v", err)
		}
	}
	if err := w.page(m.root, 0); err != nil {
		return bad("%v", err)
	}
	// As bbolt's Check: every page below the high water mark is in use or
	// free; anything else means a lost or overwritten page.
	for id := uint64(2); id < m.pgid; id++ {
		if !w.reach[id] && !w.freed[id] {
			return bad("page %d is neither in use nor free", id)
		}
	}
	return sc, nil
}

type walker struct {
	data  []byte
	ps    int
	hwm   uint64 // high water mark: pages at or above it are not in use
	reach map[uint64]bool
	freed map[uint64]bool
}

// span returns page id with its overflow pages, checked against the file.
func (w *walker) span(id uint64) ([]byte, uint16, uint16, error) {
	if id >= w.hwm {
		return nil, 0, 0, fmt.Errorf("page %d beyond the last page %d", id, w.hwm-1)
	}
	off := int(id) * w.ps
	h := w.data[off : off+pageHeaderSize]
	flags, count, overflow := ne.Uint16(h[8:]), ne.Uint16(h[10:]), uint64(ne.Uint32(h[12:]))
	if id+overflow >= w.hwm {
		return nil, 0, 0, fmt.Errorf("page %d with %d overflow pages runs past the last page %d", id, overflow, w.hwm-1)
	}
	if got := ne.Uint64(h[0:]); got != id {
		return nil, 0, 0, fmt.Errorf("page %d carries id %d", id, got)
	}
	return w.data[off : off+int(overflow+1)*w.ps], flags, count, nil
}

func (w *walker) claim(id uint64, n int) error {
	for i := range uint64(n / w.ps) {
		switch {
		case w.reach[id+i]:
			return fmt.Errorf("page %d referenced twice", id+i)
		case w.freed[id+i]:
			return fmt.Errorf("page %d is in use and on the freelist", id+i)
		}
		w.reach[id+i] = true
	}
	return nil
}

func (w *walker) freelist(id uint64) error {
	p, flags, count, err := w.span(id)
	if err != nil {
		return fmt.Errorf("freelist: %w", err)
	}
	if flags != flagFreelist {
		return fmt.Errorf("freelist page %d has page flags %#x", id, flags)
	}
	if err := w.claim(id, len(p)); err != nil {
		return fmt.Errorf("freelist: %w", err)
	}
	ids := p[pageHeaderSize:]
	n := uint64(count)
	if count == 0xFFFF { // the real count is the first id
		if len(ids) < 8 {
			return fmt.Errorf("freelist page %d too short for its count", id)
		}
		n, ids = ne.Uint64(ids), ids[8:]
	}
	if n > uint64(len(ids)/8) {
		return fmt.Errorf("freelist page %d lists %d pages, room for %d", id, n, len(ids)/8)
	}
	for i := range n {
		f := ne.Uint64(ids[i*8:])
		switch {
		case f < 2 || f >= w.hwm:
			return fmt.Errorf("freelist page %d lists page %d outside 2-%d", id, f, w.hwm-1)
		case w.freed[f]:
			return fmt.Errorf("page %d freed twice", f)
		case w.reach[f]:
			return fmt.Errorf("page %d is in use and on the freelist", f)
		}
		w.freed[f] = true
	}
	return nil
}

// page walks a bucket's tree from page id.
func (w *walker) page(id uint64, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("page %d: tree deeper than %d", id, maxDepth)
	}
	p, flags, count, err := w.span(id)
	if err != nil {
		return err
	}
	if err := w.claim(id, len(p)); err != nil {
		return err
	}
	switch flags {
	case flagBranch:
		if pageHeaderSize+int(count)*elementSize > len(p) {
			return fmt.Errorf("page %d: %d elements do not fit", id, count)
		}
		for i := range int(count) {
			e := pageHeaderSize + i*elementSize
			pos, ksize, child := int(ne.Uint32(p[e:])), int(ne.Uint32(p[e+4:])), ne.Uint64(p[e+8:])
			if e+pos+ksize > len(p) || e+pos+ksize < e {
				return fmt.Errorf("page %d element %d: key outside the page", id, i)
			}
			if err := w.page(child, depth+1); err != nil {
				return err
			}
		}
		return nil
	case flagLeaf:
		return w.leaf(p, count, fmt.Sprintf("page %d", id), depth)
	default:
		return fmt.Errorf("page %d: page flags %#x where a branch or leaf page belongs", id, flags)
	}
}

// leaf checks a leaf's elements (p is the page, or an inline bucket's bytes)
// and walks the buckets it holds.
func (w *walker) leaf(p []byte, count uint16, where string, depth int) error {
	if pageHeaderSize+int(count)*elementSize > len(p) {
		return fmt.Errorf("%s: %d elements do not fit", where, count)
	}
	for i := range int(count) {
		e := pageHeaderSize + i*elementSize
		flags, pos, ksize, vsize := ne.Uint32(p[e:]), int(ne.Uint32(p[e+4:])), int(ne.Uint32(p[e+8:])), int(ne.Uint32(p[e+12:]))
		end := e + pos + ksize + vsize
		if end > len(p) || end < e || pos < 0 || ksize < 0 || vsize < 0 {
			return fmt.Errorf("%s element %d: key or value outside the page", where, i)
		}
		if flags&leafBucket == 0 {
			continue
		}
		v := p[e+pos+ksize : end]
		if len(v) < bucketHeader {
			return fmt.Errorf("%s element %d: bucket header too short", where, i)
		}
		if root := ne.Uint64(v); root != 0 {
			if err := w.page(root, depth+1); err != nil {
				return err
			}
			continue
		}
		// An inline bucket: its leaf page follows the header.
		in := v[bucketHeader:]
		if len(in) < pageHeaderSize {
			return fmt.Errorf("%s element %d: inline bucket too short", where, i)
		}
		if f := ne.Uint16(in[8:]); f != flagLeaf {
			return fmt.Errorf("%s element %d: inline bucket with page flags %#x", where, i, f)
		}
		if depth+1 > maxDepth {
			return fmt.Errorf("%s: buckets nested deeper than %d", where, maxDepth)
		}
		if err := w.leaf(in, ne.Uint16(in[10:]), fmt.Sprintf("%s element %d (inline bucket)", where, i), depth+1); err != nil {
			return err
		}
	}
	return nil
}
