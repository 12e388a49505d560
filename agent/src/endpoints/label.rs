//! `weftctl ns label`: an endpoint's labels changed, all at once or not at
//! all, and saved with its record. Namespaces and CNI attachments alike;
//! nothing in the kernel changes.

use tracing::info;
use weft_common::api::Endpoint;
use weft_common::labels::{self, LabelEdit};
use weft_common::Labels;

use super::{EndpointError, Endpoints, Result};

/// `labels` with `set` set and `remove` removed (absent keys are no
/// error), checked whole; the edits as a log line names them.
pub fn edited(
    labels: &Labels,
    set: &Labels,
    remove: &[String],
) -> Result<(Labels, Vec<LabelEdit>)> {
    let mut out = labels.clone();
    let mut edits = Vec::new();
    for k in remove {
        labels::check_key(k)?;
        if out.remove(k).is_some() {
            edits.push(LabelEdit::Remove(k.clone()));
        }
    }
    for (k, v) in set {
        labels::check_key(k)?;
        labels::check_value(k, v)?;
        if out.insert(k.clone(), v.clone()).as_ref() != Some(v) {
            edits.push(LabelEdit::Set(k.clone(), v.clone()));
        }
    }
    labels::check(&out)?;
    Ok((out, edits))
}

impl Endpoints {
    /// Sets and removes labels of the endpoint `name`.
    pub async fn label(&self, name: &str, set: Labels, remove: Vec<String>) -> Result<Endpoint> {
        let mut t = self.table.lock().await;
        let rec = t
            .records
            .get(name)
            .ok_or_else(|| EndpointError::NotFound(name.to_string()))?;
        let (new, edits) = edited(&rec.labels, &set, &remove)?;
        if edits.is_empty() {
            return Ok(self.endpoint(rec));
        }
        let mut rec = rec.clone();
        rec.labels = new;
        self.state.save_endpoint(&rec).await?;
        let shown: Vec<String> = edits.iter().map(ToString::to_string).collect();
        info!("labels of {}: {}", rec.describe(), shown.join(" "));
        let ep = self.endpoint(&rec);
        t.records.insert(name.to_string(), rec);
        self.changed(&t);
        Ok(ep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::labels::from_pairs as l;

    #[test]
    fn edits_apply_whole_or_not_at_all() {
        let have = l(&[("app", "web"), ("tier", "front")]);
        let (new, edits) =
            edited(&have, &l(&[("app", "db")]), &["tier".into(), "x".into()]).unwrap();
        assert_eq!(new, l(&[("app", "db")]));
        let shown: Vec<String> = edits.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["tier-", "app=db"]);
        // Setting what is already there changes nothing.
        let (same, none) = edited(&have, &l(&[("app", "web")]), &[]).unwrap();
        assert_eq!((same, none.len()), (have.clone(), 0));
        // One bad value refuses the whole edit.
        let e = edited(&have, &l(&[("ok", "1"), ("bad", "a b")]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "label bad=\"a b\": the value may hold only letters, digits, '-', '_' and '.'"
        );
        assert!(edited(&have, &Labels::new(), &["a/".into()]).is_err());
    }
}
