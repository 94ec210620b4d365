//! Reading an SQLite file's pages directly, to damage exactly one of them
//! the way a torn write would (the agent's outbox uses 4 KiB pages).

/// The outbox's page size.
pub const PAGE: usize = 4096;

/// A SQLite varint at the start of `b`: its value and length.
fn varint(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, &c) in b.iter().enumerate().take(9) {
        if i == 8 {
            return ((v << 8) | u64::from(c), 9);
        }
        v = (v << 7) | u64::from(c & 0x7f);
        if c & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (v, 9)
}

/// The rowids of the cells on table leaf page `page` (0-based), each with
/// the offset of its record in `file`; empty for any other kind of page.
pub fn leaf_cells(file: &[u8], page: usize) -> Vec<(i64, usize)> {
    let base = page * PAGE;
    let header = base + if page == 0 { 100 } else { 0 };
    if file.len() < base + PAGE || file[header] != 0x0D {
        return Vec::new();
    }
    let cells = usize::from(u16::from_be_bytes([file[header + 3], file[header + 4]]));
    (0..cells)
        .filter_map(|i| {
            let at = header + 8 + 2 * i;
            let cell = base + usize::from(u16::from_be_bytes([file[at], file[at + 1]]));
            let (_, a) = varint(file.get(cell..)?);
            let (rowid, b) = varint(file.get(cell + a..)?);
            Some((rowid as i64, cell + a + b))
        })
        .collect()
}

/// The leaf page whose live cells include a record containing `needle`
/// within its first `within` bytes, and that page's rowids.
pub fn leaf_page_holding(file: &[u8], needle: &[u8], within: usize) -> Option<(usize, Vec<i64>)> {
    (0..file.len() / PAGE).find_map(|page| {
        let cells = leaf_cells(file, page);
        cells
            .iter()
            .any(|&(_, rec)| {
                let record = &file[rec..(rec + within).min(file.len())];
                memchr::memmem::find(record, needle).is_some()
            })
            .then(|| (page, cells.iter().map(|c| c.0).collect()))
    })
}
