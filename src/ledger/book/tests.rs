//! The book's rules against a real sled database in a temp dir.

use chrono::{Duration as ChronoDuration, Utc};

use super::*;
use crate::ledger::{AccountKind, MINT_ACCOUNT};

fn book() -> (tempfile::TempDir, Book) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let book = Book::open(&store).unwrap();
    for (id, kind, allow_negative) in [
        (MINT_ACCOUNT, AccountKind::System, true),
        ("user:a", AccountKind::User, false),
        ("user:b", AccountKind::User, false),
    ] {
        let new = NewAccount {
            id: id.into(),
            kind,
            allow_negative,
        };
        book.create_account(&new).unwrap();
    }
    (dir, book)
}

fn mint(book: &Book, id: &str, account: &str, amount: u64) {
    let request = NewTransfer::posted(id, MINT_ACCOUNT, account, amount, 1);
    book.apply_transfer(&request, Utc::now()).unwrap();
}

fn account(book: &Book, id: &str) -> Account {
    book.account(id).unwrap().unwrap()
}

fn assert_balanced(book: &Book) {
    let audit = book.audit().unwrap();
    assert!(audit.balanced, "{audit:?}");
}

#[test]
fn every_transfer_debits_and_credits_the_same_amount() {
    let (_dir, book) = book();
    mint(&book, "m1", "user:a", 100);
    let transfer = NewTransfer::posted("t1", "user:a", "user:b", 30, 7);
    book.apply_transfer(&transfer, Utc::now()).unwrap();
    assert_eq!(account(&book, "user:a").balance(), 70);
    assert_eq!(account(&book, "user:b").balance(), 30);
    assert_eq!(account(&book, MINT_ACCOUNT).balance(), -100);
    let audit = book.audit().unwrap();
    assert!(audit.balanced, "{audit:?}");
    assert_eq!((audit.total_debits, audit.total_credits), (130, 130));
    assert_eq!((audit.accounts_checked, audit.transfers_checked), (3, 2));
}

#[test]
fn a_transfer_id_is_applied_once() {
    let (_dir, book) = book();
    mint(&book, "m1", "user:a", 100);
    let transfer = NewTransfer::posted("t1", "user:a", "user:b", 30, 7);
    let first = book.apply_transfer(&transfer, Utc::now()).unwrap();
    let again = book.apply_transfer(&transfer, Utc::now()).unwrap();
    assert!(!first.is_replay() && again.is_replay());
    assert_eq!(first.into_inner(), again.into_inner());
    let other = NewTransfer {
        amount: 31,
        ..transfer
    };
    let refused = book.apply_transfer(&other, Utc::now());
    assert!(matches!(refused, Err(LedgerError::TransferExists(_))));
    assert_eq!(account(&book, "user:b").balance(), 30);
    assert_balanced(&book);
}

#[test]
fn insufficient_funds_change_nothing() {
    let (_dir, book) = book();
    mint(&book, "m1", "user:a", 100);
    let before = (account(&book, "user:a"), account(&book, "user:b"));
    let transfer = NewTransfer::posted("t1", "user:a", "user:b", 101, 7);
    let refused = book.apply_transfer(&transfer, Utc::now());
    assert!(
        matches!(
            refused,
            Err(LedgerError::InsufficientFunds {
                available: 100,
                amount: 101,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!((account(&book, "user:a"), account(&book, "user:b")), before);
    assert!(book.transfer("t1").unwrap().is_none());
    assert_eq!(book.history("user:a", 10, None).unwrap().transfers.len(), 1);
    let unknown = NewTransfer::posted("t2", "user:a", "user:nobody", 1, 7);
    let refused = book.apply_transfer(&unknown, Utc::now());
    assert!(matches!(refused, Err(LedgerError::AccountNotFound(_))));
    assert_balanced(&book);
}

#[test]
fn pending_reserves_and_post_for_less_releases_the_rest() {
    let (_dir, book) = book();
    mint(&book, "m1", "user:a", 100);
    let reserve = NewTransfer::reserve("p1", "user:a", "user:b", 80, 7, None);
    book.apply_transfer(&reserve, Utc::now()).unwrap();
    let a = account(&book, "user:a");
    assert_eq!(
        (a.balance(), a.available(), a.debits_pending),
        (100, 20, 80)
    );
    assert_eq!(account(&book, "user:b").credits_pending, 80);
    let over = NewTransfer::posted("t1", "user:a", "user:b", 21, 7);
    assert!(book.apply_transfer(&over, Utc::now()).is_err());
    assert_balanced(&book);

    let too_much = book.settle("p1", Settle::Post(Some(81)), Utc::now());
    assert!(matches!(too_much, Err(LedgerError::ExceedsPending { .. })));
    let posted = book
        .settle("p1", Settle::Post(Some(50)), Utc::now())
        .unwrap();
    let posted = posted.into_inner();
    assert_eq!(
        (posted.status, posted.posted_amount),
        (TransferStatus::Posted, 50)
    );
    let a = account(&book, "user:a");
    assert_eq!((a.balance(), a.available(), a.debits_pending), (50, 50, 0));
    let b = account(&book, "user:b");
    assert_eq!((b.balance(), b.credits_pending), (50, 0));
    let replay = book
        .settle("p1", Settle::Post(Some(50)), Utc::now())
        .unwrap();
    assert!(replay.is_replay());
    let void = book.settle("p1", Settle::Void, Utc::now());
    assert!(matches!(void, Err(LedgerError::TransferNotPending { .. })));
    assert_balanced(&book);
}

#[test]
fn void_releases_everything_and_replays() {
    let (_dir, book) = book();
    mint(&book, "m1", "user:a", 100);
    let reserve = NewTransfer::reserve("p1", "user:a", "user:b", 100, 7, None);
    book.apply_transfer(&reserve, Utc::now()).unwrap();
    let voided = book.settle("p1", Settle::Void, Utc::now()).unwrap();
    assert_eq!(voided.into_inner().status, TransferStatus::Voided);
    assert!(book
        .settle("p1", Settle::Void, Utc::now())
        .unwrap()
        .is_replay());
    let post = book.settle("p1", Settle::Post(None), Utc::now());
    assert!(matches!(post, Err(LedgerError::TransferNotPending { .. })));
    let a = account(&book, "user:a");
    assert_eq!((a.available(), a.debits_pending), (100, 0));
    let plain = book.settle("m1", Settle::Void, Utc::now());
    assert!(matches!(plain, Err(LedgerError::TransferNotPending { .. })));
    assert_balanced(&book);
}

#[test]
fn expired_transfers_release_on_scan_and_when_touched() {
    let (_dir, book) = book();
    mint(&book, "m1", "user:a", 100);
    let now = Utc::now();
    for id in ["p1", "p2"] {
        let reserve = NewTransfer::reserve(id, "user:a", "user:b", 10, 7, Some(1));
        book.apply_transfer(&reserve, now).unwrap();
    }
    assert_eq!(book.expire_due(now, 10).unwrap(), 0);
    let later = now + ChronoDuration::seconds(2);
    let touched = book.settle("p1", Settle::Post(None), later);
    assert!(matches!(touched, Err(LedgerError::TransferExpired(_))));
    assert_eq!(
        book.transfer("p1").unwrap().unwrap().status,
        TransferStatus::Expired
    );
    assert_eq!(book.expire_due(later, 10).unwrap(), 1);
    assert_eq!(
        book.transfer("p2").unwrap().unwrap().status,
        TransferStatus::Expired
    );
    assert_eq!(book.expire_due(later, 10).unwrap(), 0);
    let a = account(&book, "user:a");
    assert_eq!((a.available(), a.debits_pending), (100, 0));
    assert_balanced(&book);
}

#[test]
fn overflow_is_refused_and_changes_nothing() {
    let (_dir, book) = book();
    mint(&book, "m1", "user:a", u64::MAX);
    let before = account(&book, "user:a");
    let refused = book.apply_transfer(
        &NewTransfer::posted("m2", MINT_ACCOUNT, "user:a", 1, 1),
        Utc::now(),
    );
    assert!(
        matches!(refused, Err(LedgerError::Overflow(_))),
        "{refused:?}"
    );
    assert_eq!(account(&book, "user:a"), before);
    assert_balanced(&book);
}

#[test]
fn history_pages_newest_first() {
    let (_dir, book) = book();
    for n in 0..5 {
        mint(&book, &format!("m{n}"), "user:a", 1 + n);
    }
    mint(&book, "other", "user:b", 1);
    let first = book.history("user:a", 2, None).unwrap();
    let ids = |page: &HistoryPage| -> Vec<String> {
        page.transfers.iter().map(|t| t.id.clone()).collect()
    };
    assert_eq!(ids(&first), ["m4", "m3"]);
    let second = book
        .history("user:a", 2, first.next_cursor.as_deref())
        .unwrap();
    assert_eq!(ids(&second), ["m2", "m1"]);
    let last = book
        .history("user:a", 2, second.next_cursor.as_deref())
        .unwrap();
    assert_eq!(ids(&last), ["m0"]);
    assert!(last.next_cursor.is_none());
    let exact = book.history("user:a", 5, None).unwrap();
    assert_eq!((exact.transfers.len(), exact.next_cursor), (5, None));
    assert!(matches!(
        book.history("user:a", 2, Some("zz")),
        Err(LedgerError::InvalidField(_))
    ));
    assert!(matches!(
        book.history("user:nobody", 2, None),
        Err(LedgerError::AccountNotFound(_))
    ));
}

#[test]
fn accounts_replay_or_conflict() {
    let (_dir, book) = book();
    let new = NewAccount {
        id: "user:a".into(),
        kind: AccountKind::User,
        allow_negative: false,
    };
    assert!(book.create_account(&new).unwrap().is_replay());
    let other = NewAccount {
        allow_negative: true,
        ..new
    };
    assert!(matches!(
        book.create_account(&other),
        Err(LedgerError::AccountExists(_))
    ));
}

#[test]
fn the_audit_finds_a_tampered_balance() {
    let (_dir, book) = book();
    mint(&book, "m1", "user:a", 100);
    let mut a = account(&book, "user:a");
    a.credits_posted = 5;
    a.debits_posted = 10;
    book.accounts
        .insert("user:a", serde_json::to_vec(&a).unwrap())
        .unwrap();
    let audit = book.audit().unwrap();
    assert!(!audit.balanced);
    let kinds: Vec<&str> = audit.violations.iter().map(|v| v.kind).collect();
    assert_eq!(kinds, ["balance_mismatch", "below_limit"]);
}
