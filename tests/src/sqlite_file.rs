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

/// A cell of a table leaf page.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub rowid: i64,
    /// Where its record starts in the file, and its length (rows of the
    /// agent's size fit in their page: no overflow pages).
    pub record: usize,
    pub len: usize,
}

/// The cells on table leaf page `page` (0-based); empty for any other kind
/// of page. A page cut short by a truncation reads as if zero-filled, as
/// SQLite reads it.
pub fn leaf_cells(file: &[u8], page: usize) -> Vec<Cell> {
    let base = page * PAGE;
    if base >= file.len() {
        return Vec::new();
    }
    let mut bytes = file[base..file.len().min(base + PAGE)].to_vec();
    bytes.resize(PAGE, 0);
    let header = if page == 0 { 100 } else { 0 };
    if bytes[header] != 0x0D {
        return Vec::new();
    }
    let cells = usize::from(u16::from_be_bytes([bytes[header + 3], bytes[header + 4]]));
    (0..cells)
        .filter_map(|i| {
            let at = header + 8 + 2 * i;
            let cell = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
            let (len, a) = varint(bytes.get(cell..)?);
            let (rowid, b) = varint(bytes.get(cell + a..)?);
            Some(Cell {
                rowid: rowid as i64,
                record: base + cell + a + b,
                len: usize::try_from(len).ok()?,
            })
        })
        .collect()
}

/// The leaf page whose live cells include a record containing `needle`
/// within its first `within` bytes, and that page's rowids.
pub fn leaf_page_holding(file: &[u8], needle: &[u8], within: usize) -> Option<(usize, Vec<i64>)> {
    (0..file.len().div_ceil(PAGE)).find_map(|page| {
        let cells = leaf_cells(file, page);
        cells
            .iter()
            .any(|c| record_contains(file, c, needle, within))
            .then(|| (page, cells.iter().map(|c| c.rowid).collect()))
    })
}

/// Whether `needle` is within the first `within` bytes of the cell's record.
pub fn record_contains(file: &[u8], cell: &Cell, needle: &[u8], within: usize) -> bool {
    let end = (cell.record + within).min(file.len());
    cell.record < end && memchr::memmem::find(&file[cell.record..end], needle).is_some()
}
