//! Retail transactions: completed sales, returns and post-voids.
//!
//! Modelled on ARTS/NRF POSLog: a header (terminal = POSLog workstation,
//! operator, business day, per-terminal sequence number, currency, begin/end
//! time with their UTC offset), line items, tax, tenders and totals. All
//! amounts are integer minor units of the transaction's single currency.
//!
//! [`Transaction::validate`] enforces the arithmetic a back office relies on:
//!
//! * each line's extended amount is `unit_price × quantity` (weighed lines:
//!   `price_per_kg × grams / 1000`, rounded half away from zero);
//! * `gross` = sum of the non-voided lines' extended amounts;
//! * `discounts` = sum of the non-voided lines' discounts;
//! * `tax` = sum of the tax lines;
//! * `grand` = `gross − discounts + tax` when prices exclude tax (US style),
//!   `gross − discounts` when they include it (EU style) — the rule is the
//!   explicit [`TaxMode`] of the transaction, never guessed from the country;
//! * `tendered − change = grand + rounding`, where `rounding` (version 2,
//!   default 0) is the cash rounding of the amount due: a cash payment in a
//!   currency whose smallest coin is larger than its minor unit (CHF 5.87
//!   paid as 5.85: rounding −2). It needs a cash tender and is at most half
//!   a major unit either way;
//! * a transaction with something to pay has at least one tender; one whose
//!   grand total is 0 (a fully discounted sale) may have none (version 2);
//! * no amount is negative (tenders are positive), and a total that does not
//!   fit in 64 bits is an `overflow` error, never a check skipped.

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::gtin::Gtin;
use crate::money::{weighed_amount, Currency, MinorUnits};
use crate::validation::{FieldError, Problems};

/// Natural idempotency key of anything a terminal records: POSLog's
/// (workstation, business day, sequence number) within one store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TransactionRef {
    /// The store the transaction was recorded in, when it is not the
    /// event's own: a return of goods bought in another store (version 2).
    /// Absent means the event's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    pub terminal_id: String,
    #[serde(deserialize_with = "crate::rfc3339::date")]
    pub business_day: NaiveDate,
    pub sequence_number: u64,
}

/// Whether the prices on the lines already contain the tax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxMode {
    /// Prices exclude tax; tax is added on top (grand = gross − discounts + tax).
    Exclusive,
    /// Prices include tax; tax lines only report the share (grand = gross − discounts).
    Inclusive,
}

/// The item a line is for: a GTIN read from the barcode, or a store SKU for
/// things without one (bakery, loose produce keyed by PLU).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemId {
    Gtin(Gtin),
    Sku(String),
}

/// How much of the item: a count of units, or a weight for weighed goods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Whole units; `unit_price` is per unit.
    Units(u32),
    /// Net weight in grams; `unit_price` is per kilogram.
    Grams(u32),
}

impl Quantity {
    pub fn is_positive(&self) -> bool {
        matches!(*self, Quantity::Units(n) | Quantity::Grams(n) if n > 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    pub amount: MinorUnits,
    /// Promotion or reason code, e.g. `"PROMO-2FOR1"`, `"STAFF"`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// 1-based sequence number of the line within the transaction.
    pub line_number: u32,
    pub item: ItemId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub quantity: Quantity,
    pub unit_price: MinorUnits,
    pub extended_amount: MinorUnits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discounts: Vec<Discount>,
    /// A line voided before the transaction completed; kept for audit,
    /// excluded from totals.
    #[serde(default)]
    pub voided: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxLine {
    /// Tax authority's code, e.g. `"VAT-23"`, `"STATE"`.
    pub code: String,
    /// Rate in basis points (2300 = 23 %); informational, not recomputed,
    /// because tax is rounded per jurisdiction rules the terminal owns.
    pub rate_bp: u32,
    pub taxable_amount: MinorUnits,
    pub amount: MinorUnits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenderType {
    Cash,
    Card,
    Voucher,
    GiftCard,
    Mobile,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tender {
    #[serde(rename = "type")]
    pub tender_type: TenderType,
    pub amount: MinorUnits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub gross: MinorUnits,
    pub discounts: MinorUnits,
    pub tax: MinorUnits,
    pub grand: MinorUnits,
    pub tendered: MinorUnits,
    pub change: MinorUnits,
    /// Cash rounding of the amount due (version 2): what was paid
    /// (`tendered − change`) minus `grand`. Zero, and left out, unless
    /// cash was rounded to the smallest coin.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rounding: MinorUnits,
}

fn is_zero(v: &MinorUnits) -> bool {
    *v == 0
}

/// Header, lines, tax, tenders and totals shared by sales and returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub terminal_id: String,
    pub operator_id: String,
    #[serde(deserialize_with = "crate::rfc3339::date")]
    pub business_day: NaiveDate,
    pub sequence_number: u64,
    pub currency: Currency,
    pub tax_mode: TaxMode,
    /// Terminal clock with its UTC offset: POSLog times often lack a zone,
    /// ours never do.
    #[serde(deserialize_with = "crate::rfc3339::fixed")]
    pub started_at: DateTime<FixedOffset>,
    #[serde(deserialize_with = "crate::rfc3339::fixed")]
    pub ended_at: DateTime<FixedOffset>,
    pub lines: Vec<LineItem>,
    #[serde(default)]
    pub tax: Vec<TaxLine>,
    pub tenders: Vec<Tender>,
    pub totals: Totals,
}

/// A completed sale.
pub type Sale = Transaction;

/// Goods brought back; the lines are what is refunded (positive amounts),
/// the tenders are how the refund was paid out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Return {
    #[serde(flatten)]
    pub transaction: Transaction,
    /// The sale the goods came from, when the receipt was presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<TransactionRef>,
    pub reason_code: String,
}

/// A post-void: an earlier completed transaction cancelled in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Void {
    pub terminal_id: String,
    pub operator_id: String,
    #[serde(deserialize_with = "crate::rfc3339::date")]
    pub business_day: NaiveDate,
    /// The void's own sequence number on its terminal.
    pub sequence_number: u64,
    #[serde(deserialize_with = "crate::rfc3339::fixed")]
    pub voided_at: DateTime<FixedOffset>,
    pub voided: TransactionRef,
    pub reason_code: String,
    /// Supervisor who authorised the void, when policy asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_id: Option<String>,
}

const MAX_LINES: usize = 2_000;
const MAX_ID_LEN: usize = 64;

// Field paths are built only when there is a problem to report: validation
// runs on every sale, and a valid sale should allocate nothing here.
fn check_id(problems: &mut Problems, field: impl FnOnce() -> String, value: &str) {
    if value.is_empty() {
        problems.push(FieldError::new(field(), "required", "must not be empty"));
    } else if value.len() > MAX_ID_LEN
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        problems.push(FieldError::new(
            field(),
            "invalid_id",
            "must be 1-64 characters of A-Z a-z 0-9 - _ . :",
        ));
    }
}

fn sum(
    problems: &mut Problems,
    field: impl FnOnce() -> String,
    values: impl Iterator<Item = MinorUnits>,
) -> i64 {
    let mut total: i64 = 0;
    for v in values {
        match total.checked_add(v) {
            Some(t) => total = t,
            None => {
                overflow(problems, field());
                return 0;
            }
        }
    }
    total
}

/// An amount that cannot be computed in 64 bits is an error, never a
/// check skipped: a skipped check would let any stated total through.
fn overflow(problems: &mut Problems, field: String) {
    problems.push(FieldError::new(field, "overflow", "amounts overflow"));
}

fn expect_eq(
    problems: &mut Problems,
    field: impl FnOnce() -> String,
    stated: i64,
    computed: i64,
    rule: &str,
) {
    if stated != computed {
        problems.push(FieldError::new(
            field(),
            "totals_mismatch",
            format!("is {stated} but {rule} gives {computed}"),
        ));
    }
}

impl Transaction {
    pub fn reference(&self) -> TransactionRef {
        TransactionRef {
            store_id: None,
            terminal_id: self.terminal_id.clone(),
            business_day: self.business_day,
            sequence_number: self.sequence_number,
        }
    }

    /// The lowest schema version that carries this transaction: 2 if it
    /// uses a field or rule version 2 added, else 1 (so a sale without
    /// them stays readable by a version-1 reader).
    pub fn schema_version(&self) -> u16 {
        if self.totals.rounding != 0 || self.tenders.is_empty() {
            2
        } else {
            self.currency.schema_version()
        }
    }

    /// Every problem with the transaction, each naming its field path
    /// (`lines[2].extended_amount`), so a terminal developer can fix all of
    /// them in one round trip.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut p = Problems::default();
        self.collect_problems(&mut p, "");
        p.into_result()
    }

    pub(crate) fn collect_problems(&self, p: &mut Problems, prefix: &str) {
        let f = |name: &str| format!("{prefix}{name}");
        check_id(p, || f("terminal_id"), &self.terminal_id);
        check_id(p, || f("operator_id"), &self.operator_id);
        if self.sequence_number == 0 {
            p.push(FieldError::new(
                f("sequence_number"),
                "out_of_range",
                "must be at least 1",
            ));
        }
        if !self.currency.is_known() {
            p.push(FieldError::new(
                f("currency"),
                "unknown_currency",
                format!("`{}` is not an ISO 4217 code", self.currency),
            ));
        }
        if self.ended_at < self.started_at {
            p.push(FieldError::new(
                f("ended_at"),
                "out_of_range",
                "must not be before started_at",
            ));
        }
        if self.lines.is_empty() {
            p.push(FieldError::new(
                f("lines"),
                "required",
                "a transaction needs at least one line",
            ));
        }
        if self.lines.len() > MAX_LINES {
            p.push(FieldError::new(
                f("lines"),
                "too_many",
                format!("at most {MAX_LINES} lines"),
            ));
        }
        if self.tenders.is_empty() && self.totals.grand != 0 {
            p.push(FieldError::new(
                f("tenders"),
                "required",
                "a transaction with an amount due needs at least one tender",
            ));
        }

        for (i, line) in self.lines.iter().enumerate() {
            let lf = |name: &str| format!("{prefix}lines[{i}].{name}");
            if line.line_number as usize != i + 1 {
                p.push(FieldError::new(
                    lf("line_number"),
                    "out_of_sequence",
                    format!(
                        "is {} but lines are numbered from 1; expected {}",
                        line.line_number,
                        i + 1
                    ),
                ));
            }
            if let ItemId::Sku(sku) = &line.item {
                check_id(p, || lf("item.sku"), sku);
            }
            if line.unit_price < 0 {
                p.push(FieldError::new(
                    lf("unit_price"),
                    "negative",
                    "must not be negative",
                ));
            }
            let computed = match line.quantity {
                Quantity::Units(0) | Quantity::Grams(0) => {
                    p.push(FieldError::new(
                        lf("quantity"),
                        "out_of_range",
                        "must be positive",
                    ));
                    None
                }
                Quantity::Units(n) => line.unit_price.checked_mul(i64::from(n)),
                Quantity::Grams(g) => weighed_amount(line.unit_price, i64::from(g)),
            };
            match computed {
                Some(computed) => expect_eq(
                    p,
                    || lf("extended_amount"),
                    line.extended_amount,
                    computed,
                    "unit_price × quantity",
                ),
                // A zero quantity was reported above; anything else is a
                // product no 64-bit amount can state.
                None if line.quantity.is_positive() => overflow(p, lf("extended_amount")),
                None => {}
            }
            let mut each_in_range = true;
            for (j, d) in line.discounts.iter().enumerate() {
                if d.amount < 0 || d.amount > line.extended_amount {
                    each_in_range = false;
                    p.push(FieldError::new(
                        format!("{prefix}lines[{i}].discounts[{j}].amount"),
                        "out_of_range",
                        "must be between 0 and the line's extended amount",
                    ));
                }
            }
            // Each discount within the line is not enough: two of them
            // could take a line below zero and the sale's grand total with
            // it, a "sale" that pays money out of the till.
            if each_in_range && line.discounts.len() > 1 {
                let total = line
                    .discounts
                    .iter()
                    .try_fold(0i64, |acc, d| acc.checked_add(d.amount));
                if total.is_none_or(|t| t > line.extended_amount) {
                    p.push(FieldError::new(
                        lf("discounts"),
                        "out_of_range",
                        "the line's discounts together must not exceed its extended amount",
                    ));
                }
            }
        }
        for (i, t) in self.tax.iter().enumerate() {
            for (name, value) in [("amount", t.amount), ("taxable_amount", t.taxable_amount)] {
                if value < 0 {
                    p.push(FieldError::new(
                        format!("{prefix}tax[{i}].{name}"),
                        "negative",
                        "must not be negative",
                    ));
                }
            }
        }
        for (i, t) in self.tenders.iter().enumerate() {
            if t.amount <= 0 {
                p.push(FieldError::new(
                    format!("{prefix}tenders[{i}].amount"),
                    "out_of_range",
                    "must be positive",
                ));
            }
        }

        let live = || self.lines.iter().filter(|l| !l.voided);
        let gross = sum(p, || f("totals.gross"), live().map(|l| l.extended_amount));
        let discounts = sum(
            p,
            || f("totals.discounts"),
            live().flat_map(|l| l.discounts.iter().map(|d| d.amount)),
        );
        let tax = sum(p, || f("totals.tax"), self.tax.iter().map(|t| t.amount));
        let tendered = sum(
            p,
            || f("totals.tendered"),
            self.tenders.iter().map(|t| t.amount),
        );
        let totals = &self.totals;
        expect_eq(
            p,
            || f("totals.gross"),
            totals.gross,
            gross,
            "the sum of the non-voided lines",
        );
        expect_eq(
            p,
            || f("totals.discounts"),
            totals.discounts,
            discounts,
            "the sum of the line discounts",
        );
        expect_eq(
            p,
            || f("totals.tax"),
            totals.tax,
            tax,
            "the sum of the tax lines",
        );
        let grand = match self.tax_mode {
            TaxMode::Exclusive => gross
                .checked_sub(discounts)
                .and_then(|v| v.checked_add(tax)),
            TaxMode::Inclusive => gross.checked_sub(discounts),
        };
        let rule = match self.tax_mode {
            TaxMode::Exclusive => "gross − discounts + tax (tax_mode exclusive)",
            TaxMode::Inclusive => "gross − discounts (tax_mode inclusive)",
        };
        match grand {
            Some(grand) => expect_eq(p, || f("totals.grand"), totals.grand, grand, rule),
            None => overflow(p, f("totals.grand")),
        }
        expect_eq(
            p,
            || f("totals.tendered"),
            totals.tendered,
            tendered,
            "the sum of the tenders",
        );
        if totals.change < 0 {
            p.push(FieldError::new(
                f("totals.change"),
                "negative",
                "must not be negative",
            ));
        }
        if totals.rounding != 0 {
            self.check_rounding(p, &f);
        }
        match totals.tendered.checked_sub(totals.change) {
            Some(paid) if totals.rounding == 0 => expect_eq(
                p,
                || f("totals.change"),
                paid,
                totals.grand,
                "tendered − change must equal grand; tendered − change",
            ),
            Some(paid) => match totals.grand.checked_add(totals.rounding) {
                Some(due) => expect_eq(
                    p,
                    || f("totals.change"),
                    paid,
                    due,
                    "tendered − change must equal grand + rounding; tendered − change",
                ),
                None => overflow(p, f("totals.rounding")),
            },
            None => overflow(p, f("totals.change")),
        }
    }

    /// Cash rounding is to the smallest coin, which is never more than a
    /// major unit: at most half of one either way, and only with cash.
    fn check_rounding(&self, p: &mut Problems, f: &impl Fn(&str) -> String) {
        if !self
            .tenders
            .iter()
            .any(|t| t.tender_type == TenderType::Cash)
        {
            p.push(FieldError::new(
                f("totals.rounding"),
                "not_allowed",
                "cash rounding needs a cash tender",
            ));
        }
        let half_major = 10i64.pow(self.currency.exponent()) / 2;
        if self.totals.rounding.unsigned_abs() > half_major.unsigned_abs() {
            p.push(FieldError::new(
                f("totals.rounding"),
                "out_of_range",
                format!(
                    "must be within ±{half_major} (half a major unit of {})",
                    self.currency
                ),
            ));
        }
    }
}

impl Return {
    pub fn validate(&self) -> Result<(), Problems> {
        let mut p = Problems::default();
        self.transaction.collect_problems(&mut p, "");
        if self.reason_code.is_empty() {
            p.push(FieldError::new(
                "reason_code",
                "required",
                "must not be empty",
            ));
        }
        if let Some(orig) = &self.original {
            if let Some(store) = &orig.store_id {
                if let Err(mut e) = crate::validate_store_id(store) {
                    e.field = "original.store_id".into();
                    p.push(e);
                }
            }
            check_id(&mut p, || "original.terminal_id".into(), &orig.terminal_id);
            check_reference_sequence(&mut p, "original.sequence_number", orig);
            let own = self.transaction.reference();
            if orig.store_id.is_none() && *orig == own {
                p.push(FieldError::new(
                    "original",
                    "self_reference",
                    "a return cannot be its own original sale",
                ));
            } else if orig.store_id.is_none() && orig.business_day > own.business_day {
                // Another store's business day follows its own time zone
                // and cut-over: only one store's days compare.
                p.push(FieldError::new(
                    "original.business_day",
                    "out_of_range",
                    "the original sale cannot be on a later business day than the return",
                ));
            }
        }
        p.into_result()
    }

    /// See [`Transaction::schema_version`]; naming another store's sale is
    /// version 2 too.
    pub fn schema_version(&self) -> u16 {
        let other_store = self.original.as_ref().is_some_and(|o| o.store_id.is_some());
        if other_store {
            2
        } else {
            self.transaction.schema_version()
        }
    }
}

/// A reference names a transaction, and no transaction has number 0.
fn check_reference_sequence(p: &mut Problems, field: &str, r: &TransactionRef) {
    if r.sequence_number == 0 {
        p.push(FieldError::new(
            field,
            "out_of_range",
            "must be at least 1: it names a transaction",
        ));
    }
}

impl Void {
    pub fn reference(&self) -> TransactionRef {
        TransactionRef {
            store_id: None,
            terminal_id: self.terminal_id.clone(),
            business_day: self.business_day,
            sequence_number: self.sequence_number,
        }
    }

    pub fn validate(&self) -> Result<(), Problems> {
        let mut p = Problems::default();
        if self.voided.store_id.is_some() {
            // Void is still version 1, which has no such field: a reader of
            // it would take the reference as this store's.
            p.push(FieldError::new(
                "voided.store_id",
                "not_allowed",
                "a post-void cancels a transaction of its own store; leave store_id out",
            ));
        }
        check_id(&mut p, || "terminal_id".into(), &self.terminal_id);
        check_id(&mut p, || "operator_id".into(), &self.operator_id);
        check_id(
            &mut p,
            || "voided.terminal_id".into(),
            &self.voided.terminal_id,
        );
        check_reference_sequence(&mut p, "voided.sequence_number", &self.voided);
        if self.sequence_number == 0 {
            p.push(FieldError::new(
                "sequence_number",
                "out_of_range",
                "must be at least 1",
            ));
        }
        if self.reason_code.is_empty() {
            p.push(FieldError::new(
                "reason_code",
                "required",
                "must not be empty",
            ));
        }
        let own = self.reference();
        if self.voided == own {
            p.push(FieldError::new(
                "voided",
                "self_reference",
                "a void cannot void itself",
            ));
        } else if self.voided.business_day > own.business_day {
            p.push(FieldError::new(
                "voided.business_day",
                "out_of_range",
                "a post-void cancels an earlier transaction, not one on a later business day",
            ));
        } else if self.voided.terminal_id == own.terminal_id
            && self.voided.business_day == own.business_day
            && self.voided.sequence_number > own.sequence_number
        {
            // A terminal numbers its transactions in order: on its own day,
            // what it voids came before the void.
            p.push(FieldError::new(
                "voided.sequence_number",
                "out_of_range",
                format!(
                    "a post-void cancels an earlier transaction of its terminal: must be below the void's own {}",
                    own.sequence_number
                ),
            ));
        }
        p.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples;

    fn sale() -> Sale {
        samples::sale()
    }

    fn codes(t: &Transaction) -> Vec<(String, String)> {
        match t.validate() {
            Ok(()) => vec![],
            Err(p) => p
                .iter()
                .map(|e| (e.field.clone(), e.code.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_sample_sale_adds_up() {
        assert_eq!(codes(&sale()), vec![]);
    }

    #[test]
    fn a_wrong_grand_total_names_the_field() {
        let mut s = sale();
        s.totals.grand += 1;
        let c = codes(&s);
        assert!(
            c.contains(&("totals.grand".into(), "totals_mismatch".into())),
            "{c:?}"
        );
    }

    #[test]
    fn a_wrong_extended_amount_names_the_line() {
        let mut s = sale();
        s.lines[1].extended_amount += 10;
        let c = codes(&s);
        assert!(
            c.contains(&("lines[1].extended_amount".into(), "totals_mismatch".into())),
            "{c:?}"
        );
    }

    #[test]
    fn voided_lines_are_excluded_from_totals() {
        let mut s = sale();
        let mut extra = s.lines[0].clone();
        extra.line_number = s.lines.len() as u32 + 1;
        extra.voided = true;
        s.lines.push(extra);
        assert_eq!(codes(&s), vec![]);
    }

    #[test]
    fn tax_mode_decides_whether_tax_is_added() {
        let mut s = sale();
        assert_eq!(s.tax_mode, TaxMode::Inclusive);
        s.tax_mode = TaxMode::Exclusive;
        let c = codes(&s);
        assert!(
            c.contains(&("totals.grand".into(), "totals_mismatch".into())),
            "{c:?}"
        );
        // Make it consistent as a tax-exclusive sale: grand and tender grow by the tax.
        s.totals.grand += s.totals.tax;
        s.totals.tendered += s.totals.tax;
        s.tenders[0].amount += s.totals.tax;
        assert_eq!(codes(&s), vec![]);
    }

    /// Version 2: a cash payment rounded to the smallest coin balances as
    /// grand + rounding; the rounding needs cash and stays within half a
    /// major unit; the v2 samples validate and say they are version 2.
    #[test]
    fn cash_rounding_balances_tendered_minus_change_against_grand_plus_rounding() {
        let s = samples::sale_with_cash_rounding();
        assert_eq!(codes(&s), vec![]);
        assert_eq!(s.schema_version(), 2);
        assert_eq!(sale().schema_version(), 1);

        let mut unstated = s.clone();
        unstated.totals.rounding = 0;
        assert_eq!(
            codes(&unstated),
            vec![("totals.change".into(), "totals_mismatch".into())]
        );
        let mut wrong = s.clone();
        wrong.totals.rounding = -3;
        assert_eq!(
            codes(&wrong),
            vec![("totals.change".into(), "totals_mismatch".into())]
        );
        // Rounded up: 5.87 due, 5.90 paid.
        let mut up = s.clone();
        up.totals.change = 410;
        up.totals.rounding = 3;
        assert_eq!(codes(&up), vec![]);

        let mut by_card = s.clone();
        by_card.tenders[0].tender_type = TenderType::Card;
        assert_eq!(
            codes(&by_card),
            vec![("totals.rounding".into(), "not_allowed".into())]
        );
        // Sweden rounds cash to whole kronor: up to 50 öre either way.
        let mut sek = s.clone();
        sek.currency = "SEK".parse().expect("SEK");
        sek.totals.rounding = -37;
        sek.totals.change = 1000 - (587 - 37);
        assert_eq!(codes(&sek), vec![]);
        sek.totals.rounding = -51;
        sek.totals.change = 1000 - (587 - 51);
        assert_eq!(
            codes(&sek),
            vec![("totals.rounding".into(), "out_of_range".into())]
        );
        // No minor unit, no rounding below it.
        let mut jpy = samples::sale_jpy();
        jpy.tenders[0].tender_type = TenderType::Cash;
        jpy.totals.rounding = 1;
        jpy.totals.change = 0;
        jpy.tenders[0].amount = 325;
        jpy.totals.tendered = 325;
        assert_eq!(
            codes(&jpy),
            vec![("totals.rounding".into(), "out_of_range".into())]
        );
    }

    /// A reader of version 1 refuses a currency code added since: an event
    /// in one is version 2.
    #[test]
    fn a_sale_in_a_currency_added_since_version_1_is_version_2() {
        let mut s = sale();
        s.currency = "XCG".parse().expect("XCG");
        assert_eq!(codes(&s), vec![]);
        assert_eq!(s.schema_version(), 2);
    }

    #[test]
    fn a_transaction_with_nothing_to_pay_needs_no_tender() {
        let s = samples::fully_discounted_sale();
        assert_eq!(codes(&s), vec![]);
        assert_eq!(s.schema_version(), 2);
        let mut owing = s.clone();
        owing.lines[0].discounts[0].amount = 198;
        owing.totals.discounts = 198;
        owing.totals.grand = 1;
        assert!(
            codes(&owing).contains(&("tenders".into(), "required".into())),
            "{:?}",
            codes(&owing)
        );
    }

    #[test]
    fn a_return_may_name_another_stores_sale_and_a_void_may_not() {
        let r = samples::return_of_another_stores_sale();
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.schema_version(), 2);
        assert_eq!(samples::return_().schema_version(), 1);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["original"]["store_id"], "store-0017");
        let mut bad = r.clone();
        if let Some(o) = &mut bad.original {
            o.store_id = Some("x".into());
        }
        let e = bad.validate().expect_err("a store id is 2-63 characters");
        assert_eq!(
            e.iter().next().map(|e| e.field.as_str()),
            Some("original.store_id")
        );

        let mut v = samples::void();
        v.voided.store_id = Some("store-0017".into());
        let e = v.validate().expect_err("not in a void");
        assert_eq!(
            e.iter()
                .map(|e| (e.field.as_str(), e.code))
                .collect::<Vec<_>>(),
            [("voided.store_id", "not_allowed")]
        );
    }

    #[test]
    fn references_point_back_in_time_and_never_at_themselves() {
        let mut r = samples::return_();
        r.original = Some(r.transaction.reference());
        let fields = |e: Problems| {
            e.iter()
                .map(|e| (e.field.clone(), e.code))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            fields(r.validate().expect_err("itself")),
            [("original".to_owned(), "self_reference")]
        );
        let mut later = samples::return_();
        if let Some(o) = &mut later.original {
            o.business_day = o.business_day.succ_opt().expect("a next day");
        }
        assert_eq!(
            fields(later.validate().expect_err("later")),
            [("original.business_day".to_owned(), "out_of_range")]
        );
        // Another store's day is its own: a sale at 00:30 in Paris on D+1
        // is returned in New York at 19:00 on D.
        let mut elsewhere = samples::return_of_another_stores_sale();
        if let Some(o) = &mut elsewhere.original {
            o.business_day = elsewhere
                .transaction
                .business_day
                .succ_opt()
                .expect("a next day");
        }
        assert_eq!(elsewhere.validate(), Ok(()));

        let mut v = samples::void();
        v.voided.sequence_number = v.sequence_number + 5;
        assert_eq!(
            fields(v.validate().expect_err("after the void")),
            [("voided.sequence_number".to_owned(), "out_of_range")]
        );
        // Another terminal's numbers are its own.
        v.voided.terminal_id = "pos-02".into();
        assert_eq!(v.validate(), Ok(()));
        v.voided.business_day = v.business_day.succ_opt().expect("a next day");
        assert_eq!(
            fields(v.validate().expect_err("a later day")),
            [("voided.business_day".to_owned(), "out_of_range")]
        );
    }

    #[test]
    fn change_must_balance_tenders_against_grand() {
        let mut s = sale();
        s.totals.change += 5;
        let c = codes(&s);
        assert!(
            c.contains(&("totals.change".into(), "totals_mismatch".into())),
            "{c:?}"
        );
    }

    #[test]
    fn weighed_lines_use_price_per_kilogram() {
        let mut s = sale();
        s.lines[0].quantity = Quantity::Grams(1234);
        s.lines[0].unit_price = 299;
        s.lines[0].extended_amount = 369;
        let c = codes(&s);
        // Only totals now disagree, not the weighed line itself.
        assert!(
            !c.iter().any(|(f, _)| f == "lines[0].extended_amount"),
            "{c:?}"
        );
    }

    #[test]
    fn discounts_that_together_exceed_their_line_are_refused_even_when_the_totals_agree() {
        // A "sale" that pays money out: each discount alone is within the
        // line, and every total is computed consistently from them.
        let mut s = sale();
        s.lines.truncate(1);
        let extended = s.lines[0].extended_amount;
        s.lines[0].discounts = vec![
            Discount {
                amount: extended,
                reason: "PROMO".into(),
            },
            Discount {
                amount: extended,
                reason: "STAFF".into(),
            },
        ];
        s.tax.clear();
        s.totals.gross = extended;
        s.totals.discounts = 2 * extended;
        s.totals.tax = 0;
        s.totals.grand = -extended;
        s.tenders.truncate(1);
        s.tenders[0].amount = 1;
        s.totals.tendered = 1;
        s.totals.change = 1 + extended;
        assert_eq!(
            codes(&s),
            vec![("lines[0].discounts".to_owned(), "out_of_range".to_owned())]
        );
        // Two discounts that fit together are fine.
        s.lines[0].discounts[0].amount = extended / 2;
        s.lines[0].discounts[1].amount = extended - extended / 2;
        s.totals.discounts = extended;
        s.totals.grand = 0;
        s.totals.change = 1;
        assert_eq!(codes(&s), vec![]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = sale();
        s.terminal_id.clear();
        s.sequence_number = 0;
        s.tenders.clear();
        let c = codes(&s);
        for field in ["terminal_id", "sequence_number", "tenders"] {
            assert!(
                c.iter().any(|(f, _)| f == field),
                "{field} missing from {c:?}"
            );
        }
    }

    #[test]
    fn a_void_cannot_void_itself() {
        let mut v = samples::void();
        v.voided = v.reference();
        let p = v
            .validate()
            .err()
            .map(|p| p.iter().map(|e| e.code).collect::<Vec<_>>());
        assert_eq!(p, Some(vec!["self_reference"]));
    }

    #[test]
    fn a_void_or_return_cannot_name_transaction_number_0() {
        let fields = |r: Result<(), Problems>| {
            r.err().map(|p| {
                p.iter()
                    .map(|e| (e.field.clone(), e.code))
                    .collect::<Vec<_>>()
            })
        };
        let mut v = samples::void();
        v.voided.sequence_number = 0;
        assert_eq!(
            fields(v.validate()),
            Some(vec![("voided.sequence_number".to_owned(), "out_of_range")])
        );
        let mut r = samples::return_();
        if let Some(original) = r.original.as_mut() {
            original.sequence_number = 0;
        }
        assert_eq!(
            fields(r.validate()),
            Some(vec![(
                "original.sequence_number".to_owned(),
                "out_of_range"
            )])
        );
    }

    #[test]
    fn returns_need_a_reason() {
        let mut r = samples::return_();
        assert!(r.validate().is_ok());
        r.reason_code.clear();
        assert!(r.validate().is_err());
    }

    /// The back office's arithmetic in `i128`, where nothing overflows: the
    /// oracle `validate` is held to.
    fn adds_up_exactly(t: &Transaction) -> bool {
        let wide = i128::from;
        let lines_ok = t.lines.iter().all(|l| {
            let price = wide(l.unit_price);
            let (computed, positive) = match l.quantity {
                Quantity::Units(n) => (price * i128::from(n), n > 0),
                Quantity::Grams(g) => ((price * i128::from(g) + 500).div_euclid(1000), g > 0),
            };
            l.unit_price >= 0
                && positive
                && wide(l.extended_amount) == computed
                && l.discounts
                    .iter()
                    .all(|d| d.amount >= 0 && d.amount <= l.extended_amount)
                && l.discounts.iter().map(|d| wide(d.amount)).sum::<i128>()
                    <= wide(l.extended_amount)
        });
        let live = || t.lines.iter().filter(|l| !l.voided);
        let gross: i128 = live().map(|l| wide(l.extended_amount)).sum();
        let discounts: i128 = live()
            .flat_map(|l| &l.discounts)
            .map(|d| wide(d.amount))
            .sum();
        let tax: i128 = t.tax.iter().map(|x| wide(x.amount)).sum();
        let tendered: i128 = t.tenders.iter().map(|x| wide(x.amount)).sum();
        let grand = match t.tax_mode {
            TaxMode::Exclusive => gross - discounts + tax,
            TaxMode::Inclusive => gross - discounts,
        };
        let totals = &t.totals;
        lines_ok
            && t.tax.iter().all(|x| x.amount >= 0 && x.taxable_amount >= 0)
            && t.tenders.iter().all(|x| x.amount > 0)
            && wide(totals.gross) == gross
            && wide(totals.discounts) == discounts
            && wide(totals.tax) == tax
            && wide(totals.grand) == grand
            && wide(totals.tendered) == tendered
            && totals.change >= 0
            && wide(totals.tendered) - wide(totals.change) == wide(totals.grand)
    }

    /// Amounts from a till's everyday range up to where `i64` overflows.
    fn amount() -> impl proptest::strategy::Strategy<Value = i64> {
        use proptest::prelude::*;
        prop_oneof![
            4 => 0i64..100_000,
            1 => Just(-1i64),
            2 => (i64::MAX / 8)..=i64::MAX,
            1 => any::<i64>(),
        ]
    }

    /// A sale whose every total is computed from its lines the way a till
    /// with wrapping 64-bit arithmetic would: consistent unless some step
    /// overflowed, which is exactly what validation must then catch.
    fn till_sale() -> impl proptest::strategy::Strategy<Value = Sale> {
        use proptest::prelude::*;
        let quantity = prop_oneof![
            (0u32..12).prop_map(Quantity::Units),
            any::<u32>().prop_map(Quantity::Units),
            (0u32..5_000).prop_map(Quantity::Grams),
            any::<u32>().prop_map(Quantity::Grams),
        ];
        let line = (
            amount(),
            quantity,
            proptest::option::of(amount()),
            any::<bool>(),
        );
        let tax_line = (amount(), amount());
        (
            proptest::collection::vec(line, 1..4),
            proptest::collection::vec(tax_line, 0..3),
            any::<bool>(),
            prop_oneof![0i64..1_000, amount()],
        )
            .prop_map(|(lines, tax, exclusive, change)| {
                let mut s = sale();
                s.tax_mode = if exclusive {
                    TaxMode::Exclusive
                } else {
                    TaxMode::Inclusive
                };
                s.lines = lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, (unit_price, quantity, discount, voided))| {
                        let extended_amount = match quantity {
                            Quantity::Units(n) => unit_price.wrapping_mul(i64::from(n)),
                            Quantity::Grams(g) => {
                                ((i128::from(unit_price) * i128::from(g) + 500).div_euclid(1000))
                                    as i64
                            }
                        };
                        LineItem {
                            line_number: i as u32 + 1,
                            item: ItemId::Sku(format!("SKU-{i}")),
                            description: None,
                            quantity,
                            unit_price,
                            extended_amount,
                            discounts: discount
                                .map(|amount| Discount {
                                    amount,
                                    reason: "PROMO".into(),
                                })
                                .into_iter()
                                .collect(),
                            voided,
                        }
                    })
                    .collect();
                s.tax = tax
                    .into_iter()
                    .map(|(amount, taxable_amount)| TaxLine {
                        code: "VAT".into(),
                        rate_bp: 2300,
                        taxable_amount,
                        amount,
                    })
                    .collect();
                let live = s.lines.iter().filter(|l| !l.voided);
                let wrapping_sum =
                    |v: &mut dyn Iterator<Item = i64>| v.fold(0i64, i64::wrapping_add);
                let gross = wrapping_sum(&mut live.clone().map(|l| l.extended_amount));
                let discounts =
                    wrapping_sum(&mut live.flat_map(|l| l.discounts.iter().map(|d| d.amount)));
                let tax = wrapping_sum(&mut s.tax.iter().map(|t| t.amount));
                let grand = match s.tax_mode {
                    TaxMode::Exclusive => gross.wrapping_sub(discounts).wrapping_add(tax),
                    TaxMode::Inclusive => gross.wrapping_sub(discounts),
                };
                let tendered = grand.wrapping_add(change);
                s.tenders[0].amount = tendered;
                s.totals = Totals {
                    rounding: 0,
                    gross,
                    discounts,
                    tax,
                    grand,
                    tendered,
                    change,
                };
                s
            })
    }

    /// `validate` accepts a sale exactly when its arithmetic holds in exact
    /// integers: no overflow lets a sale through unchecked, and no sound
    /// sale is refused.
    #[test]
    fn validation_accepts_exactly_the_sales_that_add_up_in_exact_arithmetic() {
        use proptest::test_runner::{Config, TestRunner};
        let (valid, invalid) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
        let mut runner = TestRunner::new(Config {
            cases: 20_000,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&till_sale(), |s| {
            let exact = adds_up_exactly(&s);
            proptest::prop_assert_eq!(s.validate().is_ok(), exact, "{:?}", codes(&s));
            let counter = if exact { &valid } else { &invalid };
            counter.set(counter.get() + 1);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let (valid, invalid) = (valid.get(), invalid.get());
        assert!(
            valid > 1_000 && invalid > 1_000,
            "{valid} valid, {invalid} invalid sales"
        );
    }
}
