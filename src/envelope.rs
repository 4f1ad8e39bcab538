//! The SMTP envelope: reverse-path, every recipient in order, and the
//! parameters given with `MAIL` and `RCPT`.

use crate::proto::{Address, MailParams, RcptParams};

/// One accepted recipient with its `RCPT` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub(crate) address: Address,
    pub(crate) params: RcptParams,
}

impl Recipient {
    /// A recipient with the given parameters.
    pub fn new(address: Address, params: RcptParams) -> Self {
        Recipient { address, params }
    }

    /// The forward-path.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The `RCPT` parameters (DSN `NOTIFY`, `ORCPT`).
    pub fn params(&self) -> &RcptParams {
        &self.params
    }
}

/// The envelope of one transaction.
///
/// The reverse-path is `None` for the null sender `<>` (bounces and other
/// notifications), which is a valid sender, not an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub(crate) reverse_path: Option<Address>,
    pub(crate) params: MailParams,
    pub(crate) recipients: Vec<Recipient>,
}

impl Envelope {
    /// An envelope with a sender and no recipients yet.
    pub fn new(reverse_path: Option<Address>, params: MailParams) -> Self {
        Envelope {
            reverse_path,
            params,
            recipients: Vec::new(),
        }
    }

    /// Adds a recipient (for building envelopes in tests).
    pub fn with_recipient(mut self, recipient: Recipient) -> Self {
        self.recipients.push(recipient);
        self
    }

    /// The reverse-path; `None` is the null sender `<>`.
    pub fn reverse_path(&self) -> Option<&Address> {
        self.reverse_path.as_ref()
    }

    /// Whether the sender is the null reverse-path `<>`.
    pub fn is_null_sender(&self) -> bool {
        self.reverse_path.is_none()
    }

    /// The `MAIL` parameters (SIZE, BODY, SMTPUTF8, AUTH, RET, ENVID, REQUIRETLS).
    pub fn mail_params(&self) -> &MailParams {
        &self.params
    }

    /// Every accepted recipient, in `RCPT` order.
    pub fn recipients(&self) -> &[Recipient] {
        &self.recipients
    }
}
