use super::EmailAddress;
use sha2::{Digest, Sha256};
use std::fmt;

/// Names recipients in logs without their address: HMAC-SHA256 (RFC 2104) of the address in
/// lower case, under a key only operators hold, cut to 16 hex digits. Stable, so every line
/// about one recipient carries the same name; keyed, so a log reader cannot test guesses
/// against it. An operator finds a recipient's lines by computing the name of their address
/// (README: "Finding one recipient in the logs").
#[derive(Clone)]
pub struct RecipientRefs {
    /// The key, padded (or hashed, if longer) to SHA-256's 64-byte block.
    block_key: [u8; BLOCK],
}

/// A recipient's name in the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientRef(String);

const BLOCK: usize = 64;
const SHOWN_HEX_DIGITS: usize = 16;

impl RecipientRefs {
    pub fn new(key: &[u8]) -> Self {
        let mut block_key = [0; BLOCK];
        if key.len() > BLOCK {
            block_key[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block_key[..key.len()].copy_from_slice(key);
        }
        Self { block_key }
    }

    pub fn of(&self, address: &EmailAddress) -> RecipientRef {
        let mac = self.mac(address.as_str().to_lowercase().as_bytes());
        let hex: String = mac.iter().map(|byte| format!("{byte:02x}")).collect();
        RecipientRef(hex[..SHOWN_HEX_DIGITS].to_owned())
    }

    fn mac(&self, message: &[u8]) -> [u8; 32] {
        let pad = |byte: u8| self.block_key.map(|key_byte| key_byte ^ byte);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }
}

/// The empty key: for tests and tools only; the worker takes its key from its configuration.
impl Default for RecipientRefs {
    fn default() -> Self {
        Self::new(b"")
    }
}

impl fmt::Debug for RecipientRefs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecipientRefs(<key>)") // never the key
    }
}

impl RecipientRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecipientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn the_mac_is_hmac_sha256_so_openssl_computes_the_same_names() {
        // RFC 4231, test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(&RecipientRefs::new(b"Jefe").mac(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&RecipientRefs::new(&[0xaa; 131])
                .mac(b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn one_recipient_has_one_name_whatever_the_case_of_their_address() {
        let refs = RecipientRefs::new(b"operators-only");
        let name = refs.of(&EmailAddress::parse("Reader@Example.com").unwrap());
        assert_eq!(
            name,
            refs.of(&EmailAddress::parse("reader@example.com").unwrap())
        );
        assert_eq!(name.as_str().len(), 16);
        assert!(!name.as_str().contains("reader"));
        let other_key = RecipientRefs::new(b"another key");
        assert_ne!(
            name,
            other_key.of(&EmailAddress::parse("reader@example.com").unwrap()),
            "names depend on the key"
        );
        assert_eq!(format!("{refs:?}"), "RecipientRefs(<key>)");
    }
}
