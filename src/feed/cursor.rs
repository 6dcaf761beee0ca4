//! The feed's cursor: `(epoch, transaction_id, position)` of the last event read, opaque
//! to clients (`db::cursor`). `0` (or nothing) is the start of the log.

use crate::db::cursor as opaque;
use crate::eventstore::global::Cursor;
use crate::eventstore::Xid8;

pub fn encode(c: Cursor) -> String {
    opaque::encode(&(c.epoch, c.transaction_id.0, c.position))
}

/// The cursor, or `None` when the text was not given by this server.
pub fn decode(text: &str) -> Option<Cursor> {
    let text = text.trim();
    if text.is_empty() || text == "0" {
        return Some(Cursor::default());
    }
    let (epoch, xid, position): (i32, u64, i64) = opaque::decode(text)?;
    if epoch < 0 || position < 0 {
        return None;
    }
    Some(Cursor {
        epoch,
        transaction_id: Xid8(xid),
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_zero_is_the_start() {
        let c = Cursor {
            epoch: 1,
            transaction_id: Xid8(12_345),
            position: 77,
        };
        assert_eq!(decode(&encode(c)), Some(c));
        assert_eq!(decode("0"), Some(Cursor::default()));
        assert_eq!(decode(""), Some(Cursor::default()));
        assert_eq!(decode("12"), None);
        assert_eq!(decode("not a cursor!"), None);
        assert_eq!(
            decode(&crate::db::cursor::encode(&(-1, 1_u64, 1_i64))),
            None
        );
    }
}
