//! The book's rules against a real sled database in a temp dir.

use chrono::{Duration as ChronoDuration, Utc};

use super::test_support::Books;
use super::*;
use crate::model::ledger::{AccountKind, MINT_ACCOUNT};

async fn book() -> (tempfile::TempDir, Books) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let book = Books::new(&store);
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
        book.create_account(&new).await.unwrap();
    }
    (dir, book)
}

async fn mint(book: &Books, id: &str, account: &str, amount: u64) {
    let request = NewTransfer::posted(id, MINT_ACCOUNT, account, amount, 1);
    book.apply_transfer(&request, Utc::now()).await.unwrap();
}

async fn account(book: &Books, id: &str) -> Account {
    book.account(id).await.unwrap().unwrap()
}

async fn assert_balanced(book: &Books) {
    let audit = book.audit().await.unwrap();
    assert!(audit.balanced, "{audit:?}");
}

#[tokio::test]
async fn every_transfer_debits_and_credits_the_same_amount() {
    let (_dir, book) = book().await;
    mint(&book, "m1", "user:a", 100).await;
    let transfer = NewTransfer::posted("t1", "user:a", "user:b", 30, 7);
    book.apply_transfer(&transfer, Utc::now()).await.unwrap();
    assert_eq!(account(&book, "user:a").await.balance(), 70);
    assert_eq!(account(&book, "user:b").await.balance(), 30);
    assert_eq!(account(&book, MINT_ACCOUNT).await.balance(), -100);
    let audit = book.audit().await.unwrap();
    assert!(audit.balanced, "{audit:?}");
    assert_eq!((audit.total_debits, audit.total_credits), (130, 130));
    assert_eq!((audit.accounts_checked, audit.transfers_checked), (3, 2));
}

#[tokio::test]
async fn a_transfer_id_is_applied_once() {
    let (_dir, book) = book().await;
    mint(&book, "m1", "user:a", 100).await;
    let transfer = NewTransfer::posted("t1", "user:a", "user:b", 30, 7);
    let first = book.apply_transfer(&transfer, Utc::now()).await.unwrap();
    let again = book.apply_transfer(&transfer, Utc::now()).await.unwrap();
    assert!(!first.is_replay() && again.is_replay());
    assert_eq!(first.into_inner(), again.into_inner());
    let other = NewTransfer {
        amount: 31,
        ..transfer
    };
    let refused = book.apply_transfer(&other, Utc::now()).await;
    assert!(matches!(refused, Err(LedgerError::TransferExists(_))));
    assert_eq!(account(&book, "user:b").await.balance(), 30);
    assert_balanced(&book).await;
}

#[tokio::test]
async fn insufficient_funds_change_nothing() {
    let (_dir, book) = book().await;
    mint(&book, "m1", "user:a", 100).await;
    let before = (
        account(&book, "user:a").await,
        account(&book, "user:b").await,
    );
    let transfer = NewTransfer::posted("t1", "user:a", "user:b", 101, 7);
    let refused = book.apply_transfer(&transfer, Utc::now()).await;
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
    assert_eq!(
        (
            account(&book, "user:a").await,
            account(&book, "user:b").await
        ),
        before
    );
    assert!(book.transfer("t1").await.unwrap().is_none());
    assert_eq!(
        book.history("user:a", 10, None)
            .await
            .unwrap()
            .transfers
            .len(),
        1
    );
    let unknown = NewTransfer::posted("t2", "user:a", "user:nobody", 1, 7);
    let refused = book.apply_transfer(&unknown, Utc::now()).await;
    assert!(matches!(refused, Err(LedgerError::AccountNotFound(_))));
    assert_balanced(&book).await;
}

#[tokio::test]
async fn pending_reserves_and_post_for_less_releases_the_rest() {
    let (_dir, book) = book().await;
    mint(&book, "m1", "user:a", 100).await;
    let reserve = NewTransfer::reserve("p1", "user:a", "user:b", 80, 7, None);
    book.apply_transfer(&reserve, Utc::now()).await.unwrap();
    let a = account(&book, "user:a").await;
    assert_eq!(
        (a.balance(), a.available(), a.debits_pending),
        (100, 20, 80)
    );
    assert_eq!(account(&book, "user:b").await.credits_pending, 80);
    let over = NewTransfer::posted("t1", "user:a", "user:b", 21, 7);
    assert!(book.apply_transfer(&over, Utc::now()).await.is_err());
    assert_balanced(&book).await;

    let too_much = book.settle("p1", Settle::Post(Some(81)), Utc::now()).await;
    assert!(matches!(too_much, Err(LedgerError::ExceedsPending { .. })));
    let posted = book
        .settle("p1", Settle::Post(Some(50)), Utc::now())
        .await
        .unwrap();
    let posted = posted.into_inner();
    assert_eq!(
        (posted.status, posted.posted_amount),
        (TransferStatus::Posted, 50)
    );
    let a = account(&book, "user:a").await;
    assert_eq!((a.balance(), a.available(), a.debits_pending), (50, 50, 0));
    let b = account(&book, "user:b").await;
    assert_eq!((b.balance(), b.credits_pending), (50, 0));
    let replay = book
        .settle("p1", Settle::Post(Some(50)), Utc::now())
        .await
        .unwrap();
    assert!(replay.is_replay());
    let void = book.settle("p1", Settle::Void, Utc::now()).await;
    assert!(matches!(void, Err(LedgerError::TransferNotPending { .. })));
    assert_balanced(&book).await;
}

#[tokio::test]
async fn void_releases_everything_and_replays() {
    let (_dir, book) = book().await;
    mint(&book, "m1", "user:a", 100).await;
    let reserve = NewTransfer::reserve("p1", "user:a", "user:b", 100, 7, None);
    book.apply_transfer(&reserve, Utc::now()).await.unwrap();
    let voided = book.settle("p1", Settle::Void, Utc::now()).await.unwrap();
    assert_eq!(voided.into_inner().status, TransferStatus::Voided);
    assert!(book
        .settle("p1", Settle::Void, Utc::now())
        .await
        .unwrap()
        .is_replay());
    let post = book.settle("p1", Settle::Post(None), Utc::now()).await;
    assert!(matches!(post, Err(LedgerError::TransferNotPending { .. })));
    let a = account(&book, "user:a").await;
    assert_eq!((a.available(), a.debits_pending), (100, 0));
    let plain = book.settle("m1", Settle::Void, Utc::now()).await;
    assert!(matches!(plain, Err(LedgerError::TransferNotPending { .. })));
    assert_balanced(&book).await;
}

#[tokio::test]
async fn expired_transfers_release_on_scan_and_when_touched() {
    let (_dir, book) = book().await;
    mint(&book, "m1", "user:a", 100).await;
    let now = Utc::now();
    for id in ["p1", "p2"] {
        let reserve = NewTransfer::reserve(id, "user:a", "user:b", 10, 7, Some(1));
        book.apply_transfer(&reserve, now).await.unwrap();
    }
    assert_eq!(book.expire_due(now, 10).await.unwrap(), 0);
    let later = now + ChronoDuration::seconds(2);
    let touched = book.settle("p1", Settle::Post(None), later).await;
    assert!(matches!(touched, Err(LedgerError::TransferExpired(_))));
    assert_eq!(
        book.transfer("p1").await.unwrap().unwrap().status,
        TransferStatus::Expired
    );
    assert_eq!(book.expire_due(later, 10).await.unwrap(), 1);
    assert_eq!(
        book.transfer("p2").await.unwrap().unwrap().status,
        TransferStatus::Expired
    );
    assert_eq!(book.expire_due(later, 10).await.unwrap(), 0);
    let a = account(&book, "user:a").await;
    assert_eq!((a.available(), a.debits_pending), (100, 0));
    assert_balanced(&book).await;
}

#[tokio::test]
async fn overflow_is_refused_and_changes_nothing() {
    let (_dir, book) = book().await;
    mint(&book, "m1", "user:a", u64::MAX).await;
    let before = account(&book, "user:a").await;
    let refused = book
        .apply_transfer(
            &NewTransfer::posted("m2", MINT_ACCOUNT, "user:a", 1, 1),
            Utc::now(),
        )
        .await;
    assert!(
        matches!(refused, Err(LedgerError::Overflow(_))),
        "{refused:?}"
    );
    assert_eq!(account(&book, "user:a").await, before);
    assert_balanced(&book).await;
}

#[tokio::test]
async fn history_pages_newest_first() {
    let (_dir, book) = book().await;
    for n in 0..5 {
        mint(&book, &format!("m{n}"), "user:a", 1 + n).await;
    }
    mint(&book, "other", "user:b", 1).await;
    let first = book.history("user:a", 2, None).await.unwrap();
    let ids = |page: &HistoryPage| -> Vec<String> {
        page.transfers.iter().map(|t| t.id.clone()).collect()
    };
    assert_eq!(ids(&first), ["m4", "m3"]);
    let second = book
        .history("user:a", 2, first.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(ids(&second), ["m2", "m1"]);
    let last = book
        .history("user:a", 2, second.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(ids(&last), ["m0"]);
    assert!(last.next_cursor.is_none());
    let exact = book.history("user:a", 5, None).await.unwrap();
    assert_eq!((exact.transfers.len(), exact.next_cursor), (5, None));
    assert!(matches!(
        book.history("user:a", 2, Some("zz")).await,
        Err(LedgerError::InvalidField(_))
    ));
    assert!(matches!(
        book.history("user:nobody", 2, None).await,
        Err(LedgerError::AccountNotFound(_))
    ));
}

#[tokio::test]
async fn accounts_replay_or_conflict() {
    let (_dir, book) = book().await;
    let new = NewAccount {
        id: "user:a".into(),
        kind: AccountKind::User,
        allow_negative: false,
    };
    assert!(book.create_account(&new).await.unwrap().is_replay());
    let other = NewAccount {
        allow_negative: true,
        ..new
    };
    assert!(matches!(
        book.create_account(&other).await,
        Err(LedgerError::AccountExists(_))
    ));
}

#[tokio::test]
async fn the_audit_finds_a_tampered_balance() {
    let (_dir, book) = book().await;
    mint(&book, "m1", "user:a", 100).await;
    let mut a = account(&book, "user:a").await;
    a.credits_posted = 5;
    a.debits_posted = 10;
    book.overwrite_account(&a).await.unwrap();
    let audit = book.audit().await.unwrap();
    assert!(!audit.balanced);
    let kinds: Vec<&str> = audit.violations.iter().map(|v| v.kind).collect();
    assert_eq!(kinds, ["balance_mismatch", "below_limit"]);
}
