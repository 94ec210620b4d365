//! One valid example of every event type. Tests, benchmarks and the traffic
//! simulator build on these; the golden files in `samples/v1/` were written
//! from them once and are never regenerated, only added to.

use chrono::{DateTime, FixedOffset, NaiveDate};

use crate::device::*;
use crate::envelope::{Envelope, EventBody, Source, SourceKind};
use crate::gtin::Gtin;
use crate::money::Currency;
use crate::transaction::*;

// Literals below are fixed and covered by the golden tests; a typo panics in
// tests, never on input.
fn at(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).expect("sample timestamp literal is RFC 3339")
}

fn gtin(s: &str) -> Gtin {
    s.parse().expect("sample GTIN literal is valid")
}

fn business_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 24).expect("valid date literal")
}

/// A tax-inclusive EUR sale: two lines (one discounted), VAT, cash with change.
pub fn sale() -> Sale {
    sale_numbered("pos-01", 1042)
}

/// [`sale`] with another terminal and sequence number.
pub fn sale_numbered(terminal_id: &str, sequence_number: u64) -> Sale {
    Transaction {
        terminal_id: terminal_id.into(),
        operator_id: "op-117".into(),
        business_day: business_day(),
        sequence_number,
        currency: Currency::EUR,
        tax_mode: TaxMode::Inclusive,
        started_at: at("2026-11-24T10:14:31+01:00"),
        ended_at: at("2026-11-24T10:15:02+01:00"),
        lines: vec![
            LineItem {
                line_number: 1,
                item: ItemId::Gtin(gtin("4006381333931")),
                description: Some("Ballpoint pen, blue".into()),
                quantity: Quantity::Units(3),
                unit_price: 199,
                extended_amount: 597,
                discounts: vec![Discount {
                    amount: 100,
                    reason: "PROMO-3FOR2".into(),
                }],
                voided: false,
            },
            LineItem {
                line_number: 2,
                item: ItemId::Sku("BAKERY-ROLL".into()),
                description: None,
                quantity: Quantity::Units(2),
                unit_price: 45,
                extended_amount: 90,
                discounts: vec![],
                voided: false,
            },
        ],
        tax: vec![TaxLine {
            code: "VAT-23".into(),
            rate_bp: 2300,
            taxable_amount: 587,
            amount: 110,
        }],
        tenders: vec![Tender {
            tender_type: TenderType::Cash,
            amount: 1000,
            authorization: None,
        }],
        totals: Totals {
            gross: 687,
            discounts: 100,
            tax: 110,
            grand: 587,
            tendered: 1000,
            change: 413,
            rounding: 0,
        },
    }
}

/// A JPY sale (no minor unit), tax-exclusive, paid by card.
pub fn sale_jpy() -> Sale {
    Transaction {
        terminal_id: "pos-07".into(),
        operator_id: "op-3".into(),
        business_day: business_day(),
        sequence_number: 88,
        currency: Currency::JPY,
        tax_mode: TaxMode::Exclusive,
        started_at: at("2026-11-24T18:01:00+09:00"),
        ended_at: at("2026-11-24T18:01:40+09:00"),
        lines: vec![LineItem {
            line_number: 1,
            item: ItemId::Gtin(gtin("4901234567894")),
            description: Some("Green tea 500ml".into()),
            quantity: Quantity::Units(2),
            unit_price: 150,
            extended_amount: 300,
            discounts: vec![],
            voided: false,
        }],
        tax: vec![TaxLine {
            code: "JCT-8".into(),
            rate_bp: 800,
            taxable_amount: 300,
            amount: 24,
        }],
        tenders: vec![Tender {
            tender_type: TenderType::Card,
            amount: 324,
            authorization: Some("A1B2C3".into()),
        }],
        totals: Totals {
            gross: 300,
            discounts: 0,
            tax: 24,
            grand: 324,
            tendered: 324,
            change: 0,
            rounding: 0,
        },
    }
}

pub fn return_() -> Return {
    let mut t = sale_numbered("pos-01", 1050);
    t.lines.truncate(1);
    t.lines[0].quantity = Quantity::Units(1);
    t.lines[0].extended_amount = 199;
    t.lines[0].discounts.clear();
    t.tax[0].taxable_amount = 199;
    t.tax[0].amount = 37;
    t.tenders[0].amount = 199;
    t.totals = Totals {
        gross: 199,
        discounts: 0,
        tax: 37,
        grand: 199,
        tendered: 199,
        change: 0,
        rounding: 0,
    };
    Return {
        transaction: t,
        original: Some(TransactionRef {
            store_id: None,
            terminal_id: "pos-01".into(),
            business_day: business_day(),
            sequence_number: 1042,
        }),
        reason_code: "DEFECTIVE".into(),
    }
}

/// Version 2: [`sale`] paid in cash in a store that rounds cash to 5 cents
/// (the Netherlands): 5.87 due, 5.85 paid, 4.15 change.
pub fn sale_with_cash_rounding() -> Sale {
    let mut s = sale_numbered("pos-01", 1044);
    s.totals.change = 415;
    s.totals.rounding = -2;
    s
}

/// Version 2: a sale whose one line is given away in full (a staff gift):
/// nothing to pay, so no tender.
pub fn fully_discounted_sale() -> Sale {
    let mut s = sale_numbered("pos-01", 1045);
    s.lines.truncate(1);
    s.lines[0].quantity = Quantity::Units(1);
    s.lines[0].extended_amount = 199;
    s.lines[0].discounts = vec![Discount {
        amount: 199,
        reason: "STAFF-GIFT".into(),
    }];
    s.tax.clear();
    s.tenders.clear();
    s.totals = Totals {
        gross: 199,
        discounts: 199,
        tax: 0,
        grand: 0,
        tendered: 0,
        change: 0,
        rounding: 0,
    };
    s
}

/// Version 2: [`return_`] of goods bought in another store of the chain.
pub fn return_of_another_stores_sale() -> Return {
    let mut r = return_();
    r.transaction.sequence_number = 1051;
    if let Some(original) = &mut r.original {
        original.store_id = Some("store-0017".into());
    }
    r
}

pub fn void() -> Void {
    Void {
        terminal_id: "pos-01".into(),
        operator_id: "op-117".into(),
        business_day: business_day(),
        sequence_number: 1043,
        voided_at: at("2026-11-24T10:16:10+01:00"),
        voided: TransactionRef {
            store_id: None,
            terminal_id: "pos-01".into(),
            business_day: business_day(),
            sequence_number: 1042,
        },
        reason_code: "CUSTOMER_CANCELLED".into(),
        approver_id: Some("sup-9".into()),
    }
}

pub fn scan() -> Scan {
    Scan {
        lane: "lane-1".into(),
        symbology: Some("]C1".into()),
        data: "0104006381333931\u{1d}10LOT42\u{1d}17261231".into(),
        gtin: Some(gtin("04006381333931")),
        elements: vec![
            Gs1Element {
                ai: "01".into(),
                value: "04006381333931".into(),
            },
            Gs1Element {
                ai: "10".into(),
                value: "LOT42".into(),
            },
            Gs1Element {
                ai: "17".into(),
                value: "261231".into(),
            },
        ],
        valid: true,
        invalid_reason: None,
        truncated: false,
    }
}

pub fn shelf_reading() -> ShelfReading {
    ShelfReading {
        gtin: gtin("05901234123457"),
        raw_counts: 8_850_608,
        grams: 1100,
        item_count: 2,
    }
}

pub fn stock_alert() -> StockAlert {
    StockAlert {
        gtin: gtin("05901234123457"),
        kind: StockAlertKind::LowStock,
        item_count: 2,
        threshold: 3,
    }
}

pub fn device_status() -> DeviceStatus {
    DeviceStatus {
        state: DeviceState::Offline,
        detail: Some("port /dev/ttyUSB0 vanished".into()),
    }
}

pub fn agent_notice() -> AgentNotice {
    AgentNotice {
        code: NoticeCode::TelemetryShed,
        message: "outbox full: 120 shelf readings shed".into(),
        count: 120,
    }
}

/// An envelope around one sample body of every kind.
/// One event of each kind version 2 added, written at version 2
/// (`samples/v2/`).
pub fn version_2_envelopes(store_id: &str) -> Vec<Envelope> {
    let source = Source {
        kind: SourceKind::PosTerminal,
        device_id: "pos-01".into(),
    };
    let t = at("2026-11-24T10:17:40+01:00");
    [
        EventBody::Sale(Box::new(sale_with_cash_rounding())),
        EventBody::Sale(Box::new(fully_discounted_sale())),
        EventBody::Return(Box::new(return_of_another_stores_sale())),
    ]
    .into_iter()
    .map(|body| Envelope::new(store_id, "eu-west", source.clone(), t, body))
    .collect()
}

pub fn envelopes(store_id: &str) -> Vec<Envelope> {
    let src = |kind, id: &str| Source {
        kind,
        device_id: id.into(),
    };
    let t = at("2026-11-24T10:15:02+01:00");
    let mk = |source, body| Envelope::new(store_id, "eu-west", source, t, body);
    vec![
        mk(
            src(SourceKind::PosTerminal, "pos-01"),
            EventBody::Sale(Box::new(sale())),
        ),
        mk(
            src(SourceKind::PosTerminal, "pos-07"),
            EventBody::Sale(Box::new(sale_jpy())),
        ),
        mk(
            src(SourceKind::PosTerminal, "pos-01"),
            EventBody::Return(Box::new(return_())),
        ),
        mk(
            src(SourceKind::PosTerminal, "pos-01"),
            EventBody::Void(void()),
        ),
        mk(src(SourceKind::Scanner, "scan-01"), EventBody::Scan(scan())),
        mk(
            src(SourceKind::ShelfSensor, "shelf-a1"),
            EventBody::ShelfReading(shelf_reading()),
        ),
        mk(
            src(SourceKind::ShelfSensor, "shelf-a1"),
            EventBody::StockAlert(stock_alert()),
        ),
        mk(
            src(SourceKind::Scanner, "scan-01"),
            EventBody::DeviceStatus(device_status()),
        ),
        mk(
            src(SourceKind::Agent, "store-agent"),
            EventBody::AgentNotice(agent_notice()),
        ),
    ]
}
