//! Groups in the engine: the household's group requests go to the client while the link is
//! up (and are answered `link_down` otherwise), answers go back to the shell as
//! [`LinkEvent::GroupAnswer`], and the gatekeeper's membership changes become `group`
//! events in the API's log (SSE and webhooks).

use super::*;
use crate::client::{GroupAnswer, GroupRequest};

impl<R: Rng + CryptoRng> Engine<R> {
    /// The API asks the gatekeeper something about groups; the answer comes back as
    /// [`LinkEvent::GroupAnswer`] with the same `ticket` (never 0, which the client keeps
    /// for its own requests).
    pub fn handle_group_request(&mut self, ticket: u64, req: GroupRequest, now_ms: u64) {
        self.tick(now_ms);
        if matches!(self.phase, Phase::Up) && ticket != 0 {
            self.client.group_request(ticket, req, now_ms);
        } else {
            self.events.push_back(LinkEvent::GroupAnswer {
                ticket,
                answer: GroupAnswer::Refused {
                    code: 503,
                    text: "link_down".into(),
                },
            });
        }
    }

    /// A `w:gp2` notification changed `group`: logged as a `group` event.
    pub(super) fn group_changed(
        &mut self,
        group: &crate::group::GroupId,
        change: &str,
        members: &[Jid],
    ) {
        let names: Vec<String> = members.iter().map(|m| m.to_user().to_string()).collect();
        let now = self.now_ms;
        let logged = self.store.begin().and_then(|txn| {
            self.bus
                .record_group(&txn, group.as_str(), change, &names, now)?;
            txn.commit()
        });
        match logged {
            Ok(()) => self.bus.notify(),
            Err(e) => self.down(format!("store: {e}")),
        }
    }
}
