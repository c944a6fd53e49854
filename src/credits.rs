//! The arithmetic of credits, without PostgreSQL: spending with a due refill first, and giving
//! back. The credit writer (`verify/credit_writer.rs`) applies it to each key it has locked,
//! request after request, and writes the result once.
//!
//! It is the arithmetic of the in-transaction spend (`verify/usage.rs`, `SPEND`): a refill
//! tops `remaining` up to `refill_amount` (never lowers it) when the verification found it due
//! and the key still has the refill time it read, so two verifications at a boundary refill
//! once; a spend needs at least `max(cost, 1)` credits; and only the version of the key that
//! was checked (`updated_at`) is spent.

/// A key's credits, as its row holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// None: unlimited.
    pub remaining: Option<i64>,
    pub refill_amount: Option<i64>,
    /// When it was last refilled, or created (microseconds).
    pub refilled: i64,
    /// Its version (`updated_at`).
    pub version: i64,
}

/// What a verification asks of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    pub cost: i64,
    /// The refill time it found due (the key's `refilled` as it read it), if any.
    pub refill_due: Option<i64>,
    pub now: i64,
    /// The version it checked.
    pub version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// Spent; the credits left.
    Spent { left: i64 },
    /// Too few credits: nothing changed.
    TooFew { left: Option<i64>, refilled: i64 },
    /// Not the version that was checked (or unlimited now): nothing changed.
    KeyChanged,
}

/// Spends `ask` from `balance` (changed only when it is spent).
pub fn spend(balance: &mut Balance, ask: Spend) -> Spent {
    let Some(remaining) = balance.remaining.filter(|_| balance.version == ask.version) else {
        return Spent::KeyChanged;
    };
    let refill = ask.refill_due == Some(balance.refilled);
    let available = if refill {
        remaining.max(balance.refill_amount.unwrap_or(0))
    } else {
        remaining
    };
    if ask.cost < 0 || available < ask.cost.max(1) {
        return Spent::TooFew {
            left: Some(remaining),
            refilled: balance.refilled,
        };
    }
    let left = available - ask.cost;
    balance.remaining = Some(left);
    if refill {
        balance.refilled = ask.now;
    }
    Spent::Spent { left }
}

/// A spend to give back (its transaction rolled back), with the balance it left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    pub cost: i64,
    /// The key's version when it was spent.
    pub version: i64,
    /// The key's last refill after the spend.
    pub refilled: i64,
}

/// Gives a spend back, if the balance is still the one it left behind apart from other spends
/// and credit additions: the same version (a balance set outright or a change of the key's
/// settings makes a new one) and no refill since (a refill already topped the balance up).
/// Otherwise the credits stay spent, which never gives more than was paid for. True when given.
pub fn refund(balance: &mut Balance, refund: Refund) -> bool {
    match balance.remaining {
        Some(r) if balance.version == refund.version && balance.refilled == refund.refilled => {
            balance.remaining = Some(r.saturating_add(refund.cost.max(0)));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(remaining: i64) -> Balance {
        Balance {
            remaining: Some(remaining),
            refill_amount: Some(10),
            refilled: 100,
            version: 7,
        }
    }

    fn ask(cost: i64) -> Spend {
        Spend {
            cost,
            refill_due: None,
            now: 1000,
            version: 7,
        }
    }

    #[test]
    fn spends_down_to_zero_and_no_further() {
        let mut b = key(3);
        assert_eq!(spend(&mut b, ask(2)), Spent::Spent { left: 1 });
        assert_eq!(
            spend(&mut b, ask(2)),
            Spent::TooFew {
                left: Some(1),
                refilled: 100
            }
        );
        assert_eq!(spend(&mut b, ask(1)), Spent::Spent { left: 0 });
        // A zero cost needs one credit left.
        assert_eq!(
            spend(&mut b, ask(0)),
            Spent::TooFew {
                left: Some(0),
                refilled: 100
            }
        );
    }

    #[test]
    fn a_due_refill_happens_once() {
        let mut b = key(0);
        let due = Spend {
            refill_due: Some(100),
            ..ask(1)
        };
        assert_eq!(spend(&mut b, due), Spent::Spent { left: 9 });
        assert_eq!(b.refilled, 1000);
        // The second verification found the same refill due: it was made already.
        assert_eq!(spend(&mut b, due), Spent::Spent { left: 8 });
        // A refill never lowers the balance.
        let mut rich = key(50);
        assert_eq!(
            spend(
                &mut rich,
                Spend {
                    refill_due: Some(100),
                    ..ask(1)
                }
            ),
            Spent::Spent { left: 49 }
        );
    }

    #[test]
    fn only_the_checked_version_is_spent() {
        let mut b = key(5);
        assert_eq!(
            spend(
                &mut b,
                Spend {
                    version: 8,
                    ..ask(1)
                }
            ),
            Spent::KeyChanged
        );
        let mut unlimited = Balance {
            remaining: None,
            ..key(0)
        };
        assert_eq!(spend(&mut unlimited, ask(1)), Spent::KeyChanged);
        assert_eq!(b, key(5));
    }

    #[test]
    fn refunds_give_back_only_to_the_balance_the_spend_left() {
        let back = Refund {
            cost: 4,
            version: 7,
            refilled: 100,
        };
        let mut b = key(1);
        assert!(refund(&mut b, back));
        assert_eq!(b.remaining, Some(5));
        // Set outright since (a new version), refilled since, or unlimited: stays spent.
        for mut other in [
            Balance {
                version: 8,
                ..key(1)
            },
            Balance {
                refilled: 200,
                ..key(1)
            },
            Balance {
                remaining: None,
                ..key(1)
            },
        ] {
            let before = other;
            assert!(!refund(&mut other, back));
            assert_eq!(other, before);
        }
    }

    #[test]
    fn a_spend_then_its_refund_leaves_the_balance_as_it_was() {
        let mut b = key(0);
        let due = Spend {
            refill_due: Some(100),
            ..ask(3)
        };
        assert_eq!(spend(&mut b, due), Spent::Spent { left: 7 });
        let refilled = b.refilled;
        assert!(refund(
            &mut b,
            Refund {
                cost: 3,
                version: 7,
                refilled
            }
        ));
        assert_eq!(b.remaining, Some(10));
    }

    proptest! {
        #[test]
        fn never_below_zero_and_spent_is_what_was_asked(
            start in 0i64..100, costs in proptest::collection::vec(0i64..20, 0..50)
        ) {
            let mut b = key(start);
            let mut spent = 0;
            for c in costs {
                if let Spent::Spent { left } = spend(&mut b, ask(c)) {
                    prop_assert!(left >= 0);
                    spent += c;
                }
            }
            prop_assert_eq!(b.remaining, Some(start - spent));
        }
    }
}
