//! The tagging aggregates: subject kinds, tag categories, tags and runs. They validate
//! commands against their state and emit events; they know nothing of HTTP or SQL.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::commands::{
    CategoryDraft, KindDraft, ManualTagCommand, RunDraft, SubjectImportCommand, TagCategoryCommand,
    TagCommand, TagDraft, TagRunCommand,
};
use super::events::{
    AppliedTag, KindSchema, ManualTagEvent, SubjectErasureEvent, SubjectImportEvent,
    SubjectKindEvent, TagCategoryEvent, TagDefinition, TagEvent, TagKind, TagRunEvent,
};
use super::rules::{self, AttrType};
use crate::pipeline::{DomainError, EventSourced, Rejection};
use crate::projections::readmodel::is_identifier;

/// Why a tagging command was refused. HTTP: `Invalid` → 422 `validation_failed` naming
/// the field (a JSON pointer for rules), `NotFound` → 404, `AlreadyExists` → 409
/// `already_exists`, `Refused` → 409 `command_refused`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaggingError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    #[error("{0}")]
    Refused(String),
}

impl DomainError for TaggingError {
    fn rejection(&self) -> Rejection {
        match self {
            TaggingError::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
            TaggingError::NotFound(what) => Rejection::NotFound {
                what: (*what).to_owned(),
            },
            TaggingError::AlreadyExists(what) => Rejection::AlreadyExists {
                what: (*what).to_owned(),
            },
            TaggingError::Refused(message) => Rejection::Refused {
                message: message.clone(),
            },
        }
    }
}

pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> TaggingError {
    TaggingError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

const MAX_TEXT: usize = 200;
const MAX_ATTRIBUTES: usize = 500;
/// Column names an attribute may not take: they mean something in every source file.
const RESERVED: &[&str] = &["updated_time"];

fn check_name(field: &str, value: &str) -> Result<(), TaggingError> {
    if !is_identifier(value) {
        return Err(invalid(
            field,
            "must match [a-z][a-z0-9_]* and be at most 63 characters",
        ));
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<String, TaggingError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > MAX_TEXT {
        return Err(invalid(field, "must be 1 to 200 characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

impl KindSchema {
    /// Checks a declaration of `kind`.
    pub fn validate(kind: &str, draft: KindDraft) -> Result<Self, TaggingError> {
        check_name("kind", kind)?;
        check_name("id_field", &draft.id_field)?;
        check_name("primary_source", &draft.primary_source)?;
        if draft.attributes.len() > MAX_ATTRIBUTES {
            return Err(invalid("attributes", "at most 500 attributes"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, a) in draft.attributes.iter().enumerate() {
            check_name(&format!("attributes/{i}/name"), &a.name)?;
            check_name(&format!("attributes/{i}/source"), &a.source)?;
            if a.name == draft.id_field || RESERVED.contains(&a.name.as_str()) {
                return Err(invalid(
                    format!("attributes/{i}/name"),
                    "must not be the id field or updated_time",
                ));
            }
            if !seen.insert(a.name.as_str()) {
                return Err(invalid(format!("attributes/{i}/name"), "is declared twice"));
            }
        }
        Ok(KindSchema {
            kind: kind.to_owned(),
            id_field: draft.id_field,
            primary_source: draft.primary_source,
            attributes: draft.attributes,
        })
    }

    pub fn type_of(&self, field: &str) -> Option<AttrType> {
        self.attribute(field).map(|a| a.ty)
    }
}

// --- subject kinds -------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectKind {
    pub schema: Option<KindSchema>,
    /// Every attribute name ever declared, and whether it is sensitive: an attribute
    /// dropped and declared again keeps its sensitivity.
    #[serde(default)]
    pub declared: std::collections::BTreeMap<String, bool>,
}

impl SubjectKind {
    /// The attributes that are or were sensitive: what a forget erases.
    pub fn ever_sensitive(&self) -> Vec<String> {
        let current = self.schema.as_ref().map(KindSchema::sensitive);
        let mut names = current.unwrap_or_default();
        for (name, sensitive) in &self.declared {
            if *sensitive && !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

impl EventSourced for SubjectKind {
    const STREAM_TYPE: &'static str = "subject_kind";
}

#[async_trait]
impl Aggregate for SubjectKind {
    type Command = (String, KindDraft);
    type Event = SubjectKindEvent;
    type Error = TaggingError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    /// Declares or changes the schema. An attribute keeps its type once declared: stored
    /// values were checked against it.
    async fn handle(
        &self,
        (kind, draft): Self::Command,
        _: &(),
    ) -> Result<Vec<SubjectKindEvent>, TaggingError> {
        let schema = KindSchema::validate(&kind, draft)?;
        if let Some(old) = &self.schema {
            if old == &schema {
                return Ok(vec![]);
            }
            if old.id_field != schema.id_field {
                return Err(TaggingError::Refused(
                    "id_field cannot change once declared".into(),
                ));
            }
            for (i, a) in schema.attributes.iter().enumerate() {
                if old.type_of(&a.name).is_some_and(|t| t != a.ty) {
                    return Err(invalid(
                        format!("attributes/{i}/type"),
                        "an attribute's type cannot change once declared",
                    ));
                }
            }
        }
        for (i, a) in schema.attributes.iter().enumerate() {
            // Values stored in the clear cannot be sealed afterwards, nor sealed ones be
            // read without their keys: sensitivity belongs to the name, for good.
            if self
                .declared
                .get(&a.name)
                .is_some_and(|s| *s != a.sensitive)
            {
                return Err(invalid(
                    format!("attributes/{i}/sensitive"),
                    "whether an attribute is sensitive cannot change once declared",
                ));
            }
        }
        Ok(vec![SubjectKindEvent::SubjectKindDeclared(schema)])
    }

    fn apply(&mut self, event: SubjectKindEvent) {
        let SubjectKindEvent::SubjectKindDeclared(s) = event;
        for a in &s.attributes {
            self.declared.insert(a.name.clone(), a.sensitive);
        }
        self.schema = Some(s);
    }
}

// --- imports (appended in bulk by the import, never through `handle`) ------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectImport {
    pub completed: bool,
}

impl EventSourced for SubjectImport {
    const STREAM_TYPE: &'static str = "subject_import";
}

#[async_trait]
impl Aggregate for SubjectImport {
    type Command = SubjectImportCommand;
    type Event = SubjectImportEvent;
    type Error = TaggingError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: SubjectImportCommand,
        _: &(),
    ) -> Result<Vec<SubjectImportEvent>, TaggingError> {
        match command {}
    }

    fn apply(&mut self, event: SubjectImportEvent) {
        if let SubjectImportEvent::ImportCompleted { .. } = event {
            self.completed = true;
        }
    }
}

// --- erasure of a subject's sensitive values ------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectErasure {
    pub forgotten: u32,
}

impl EventSourced for SubjectErasure {
    const STREAM_TYPE: &'static str = "subject_erasure";
}

#[async_trait]
impl Aggregate for SubjectErasure {
    type Command = SubjectErasureEvent;
    type Event = SubjectErasureEvent;
    type Error = TaggingError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    /// The route found the keys and attributes; forgetting again is recorded again (a
    /// later import may have sealed new values under a new key).
    async fn handle(
        &self,
        command: SubjectErasureEvent,
        _: &(),
    ) -> Result<Vec<SubjectErasureEvent>, TaggingError> {
        Ok(vec![command])
    }

    fn apply(&mut self, _: SubjectErasureEvent) {
        self.forgotten += 1;
    }
}

// --- tag categories --------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagCategory {
    pub exists: bool,
}

impl EventSourced for TagCategory {
    const STREAM_TYPE: &'static str = "tag_category";
}

#[async_trait]
impl Aggregate for TagCategory {
    type Command = TagCategoryCommand;
    type Event = TagCategoryEvent;
    type Error = TaggingError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: TagCategoryCommand,
        _: &(),
    ) -> Result<Vec<TagCategoryEvent>, TaggingError> {
        let TagCategoryCommand::CreateTagCategory(CategoryDraft { code, name }) = command;
        check_name("code", &code)?;
        let name = check_text("name", &name)?;
        if self.exists {
            return Err(TaggingError::AlreadyExists("tag category"));
        }
        Ok(vec![TagCategoryEvent::TagCategoryCreated { code, name }])
    }

    fn apply(&mut self, _: TagCategoryEvent) {
        self.exists = true;
    }
}

// --- tags ------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tag {
    pub definition: Option<TagDefinition>,
    pub rule_version: i32,
    pub retired: bool,
}

impl EventSourced for Tag {
    const STREAM_TYPE: &'static str = "tag";
}

/// What a tag command needs besides the tag: the subject kind's schema (to check a rule
/// against) and whether the category exists.
#[derive(Debug, Default)]
pub struct TagServices {
    pub schema: Option<KindSchema>,
    pub category_exists: bool,
}

/// Checks a rule against the schema; the error names the offending part by JSON pointer.
pub fn check_rule(
    rule: &serde_json::Value,
    schema: &KindSchema,
) -> Result<rules::Rule, TaggingError> {
    rules::parse(rule, &|f| schema.type_of(f)).map_err(|e| TaggingError::Invalid {
        field: format!("rule{}", e.pointer),
        message: e.message,
    })
}

#[async_trait]
impl Aggregate for Tag {
    type Command = TagCommand;
    type Event = TagEvent;
    type Error = TaggingError;
    type Services = TagServices;

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: TagCommand,
        services: &TagServices,
    ) -> Result<Vec<TagEvent>, TaggingError> {
        match command {
            TagCommand::CreateTag { id, draft } => {
                if self.definition.is_some() {
                    return Err(TaggingError::AlreadyExists("tag"));
                }
                Ok(vec![TagEvent::TagCreated(validate_tag(
                    id, draft, services,
                )?)])
            }
            TagCommand::ChangeRule { rule } => {
                let def = self.live()?;
                if def.kind != TagKind::Auto {
                    return Err(invalid("rule", "only AUTO tags have rules"));
                }
                let schema = services
                    .schema
                    .as_ref()
                    .ok_or(TaggingError::NotFound("subject kind"))?;
                let rule = check_rule(&rule, schema)?.to_json();
                Ok(vec![TagEvent::TagRuleChanged {
                    tag_id: def.id,
                    rule,
                    rule_version: self.rule_version + 1,
                }])
            }
            TagCommand::RetireTag => {
                let def = self.live()?;
                Ok(vec![TagEvent::TagRetired { tag_id: def.id }])
            }
        }
    }

    fn apply(&mut self, event: TagEvent) {
        match event {
            TagEvent::TagCreated(d) => {
                self.rule_version = i32::from(d.rule.is_some());
                self.definition = Some(d);
            }
            TagEvent::TagRuleChanged {
                rule, rule_version, ..
            } => {
                if let Some(d) = &mut self.definition {
                    d.rule = Some(rule);
                }
                self.rule_version = rule_version;
            }
            TagEvent::TagRetired { .. } => self.retired = true,
            TagEvent::TagCodeClaimed { .. } => {}
        }
    }
}

impl Tag {
    fn live(&self) -> Result<&TagDefinition, TaggingError> {
        match &self.definition {
            Some(d) if !self.retired => Ok(d),
            _ => Err(TaggingError::NotFound("tag")),
        }
    }
}

fn validate_tag(
    id: i32,
    draft: TagDraft,
    services: &TagServices,
) -> Result<TagDefinition, TaggingError> {
    check_name("code", &draft.code)?;
    let name = check_text("name", &draft.name)?;
    check_name("category", &draft.category)?;
    if !services.category_exists {
        return Err(invalid("category", "no such tag category"));
    }
    let schema = services
        .schema
        .as_ref()
        .ok_or_else(|| invalid("subject_kind", "no such subject kind"))?;
    let description = match draft.description {
        Some(d) if d.chars().count() > 2000 || d.contains('\0') => {
            return Err(invalid(
                "description",
                "at most 2000 characters, and no NUL character",
            ))
        }
        d => d,
    };
    let rule = match (draft.kind, draft.rule) {
        (TagKind::Auto, Some(rule)) => Some(check_rule(&rule, schema)?.to_json()),
        (TagKind::Auto, None) => return Err(invalid("rule", "an AUTO tag needs a rule")),
        (TagKind::Manual, Some(_)) => return Err(invalid("rule", "a MANUAL tag has no rule")),
        (TagKind::Manual, None) => None,
    };
    Ok(TagDefinition {
        id,
        code: draft.code,
        name,
        category: draft.category,
        kind: draft.kind,
        subject_kind: schema.kind.clone(),
        description,
        rule,
    })
}

// --- runs ------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagRun {
    pub requested: bool,
    pub finished: bool,
    pub outcome: Option<super::events::RunOutcome>,
}

impl EventSourced for TagRun {
    const STREAM_TYPE: &'static str = "tag_run";
}

/// The run's limits.
pub const MAX_SUBJECT_IDS: usize = 100_000;
pub const MAX_TAG_IDS: usize = 1_000;

#[async_trait]
impl Aggregate for TagRun {
    type Command = TagRunCommand;
    type Event = TagRunEvent;
    type Error = TaggingError;
    type Services = Option<KindSchema>;

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: TagRunCommand,
        schema: &Option<KindSchema>,
    ) -> Result<Vec<TagRunEvent>, TaggingError> {
        let TagRunCommand::RequestRun(RunDraft {
            subject_kind,
            tag_ids,
            subject_ids,
            changed_within_days,
            as_of,
        }) = command;
        if self.requested {
            return Err(TaggingError::AlreadyExists("tagging run"));
        }
        if schema.is_none() {
            return Err(invalid("subject_kind", "no such subject kind"));
        }
        if let Some(t) = &tag_ids {
            if t.is_empty() || t.len() > MAX_TAG_IDS {
                return Err(invalid("tag_ids", "1 to 1000 tag ids, or leave it out"));
            }
        }
        if let Some(s) = &subject_ids {
            if s.is_empty() || s.len() > MAX_SUBJECT_IDS {
                return Err(invalid(
                    "subject_ids",
                    "1 to 100000 subject ids, or leave it out",
                ));
            }
        }
        if subject_ids.is_some() && changed_within_days.is_some() {
            return Err(invalid(
                "changed_within_days",
                "give subject_ids or changed_within_days, not both",
            ));
        }
        if changed_within_days.is_some_and(|d| d > 36_500) {
            return Err(invalid("changed_within_days", "at most 36500"));
        }
        Ok(vec![TagRunEvent::TagRunRequested(
            super::events::RunRequest {
                subject_kind,
                tag_ids,
                subject_ids,
                changed_within_days,
                as_of: as_of.unwrap_or_else(chrono::Utc::now),
            },
        )])
    }

    fn apply(&mut self, event: TagRunEvent) {
        match event {
            TagRunEvent::TagRunRequested(_) => self.requested = true,
            TagRunEvent::TagsChanged { .. } => {}
            TagRunEvent::TagRunCompleted(o) => {
                self.finished = true;
                self.outcome = Some(o);
            }
            TagRunEvent::TagRunFailed { .. } => self.finished = true,
        }
    }
}

// --- manual tags of one subject ----------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectManualTags {
    pub assigned: std::collections::BTreeSet<i32>,
}

impl EventSourced for SubjectManualTags {
    const STREAM_TYPE: &'static str = "subject_manual_tags";
}

/// What a manual tag command needs: the tag (as its stream has it) and whether the
/// subject exists.
#[derive(Debug, Default)]
pub struct ManualServices {
    pub tag: Option<Tag>,
    pub subject_exists: bool,
}

#[async_trait]
impl Aggregate for SubjectManualTags {
    type Command = ManualTagCommand;
    type Event = ManualTagEvent;
    type Error = TaggingError;
    type Services = ManualServices;

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    /// Assigning a tag the subject holds, or removing one it does not, changes nothing.
    async fn handle(
        &self,
        command: ManualTagCommand,
        services: &ManualServices,
    ) -> Result<Vec<ManualTagEvent>, TaggingError> {
        let ManualTagCommand {
            subject_kind,
            subject_id,
            tag_id,
            assign,
        } = command;
        let tag = services
            .tag
            .as_ref()
            .filter(|t| {
                t.definition
                    .as_ref()
                    .is_some_and(|d| d.subject_kind == subject_kind)
            })
            .ok_or(TaggingError::NotFound("tag"))?;
        let def = tag.live()?;
        if def.kind != TagKind::Manual {
            return Err(invalid(
                "tag_id",
                "an AUTO tag is assigned by runs, not by hand",
            ));
        }
        if !services.subject_exists {
            return Err(TaggingError::NotFound("subject"));
        }
        if assign == self.assigned.contains(&tag_id) {
            return Ok(vec![]);
        }
        Ok(vec![if assign {
            ManualTagEvent::ManualTagAssigned {
                subject_kind,
                subject_id,
                tag_id,
                tag: AppliedTag {
                    code: def.code.clone(),
                    name: def.name.clone(),
                    category: def.category.clone(),
                    rule_version: 0,
                },
            }
        } else {
            ManualTagEvent::ManualTagRemoved {
                subject_kind,
                subject_id,
                tag_id,
            }
        }])
    }

    fn apply(&mut self, event: ManualTagEvent) {
        match event {
            ManualTagEvent::ManualTagAssigned { tag_id, .. } => {
                self.assigned.insert(tag_id);
            }
            ManualTagEvent::ManualTagRemoved { tag_id, .. } => {
                self.assigned.remove(&tag_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tagging::events::Attribute;

    fn draft() -> KindDraft {
        KindDraft {
            id_field: "user_id".into(),
            primary_source: "user_basic_info".into(),
            attributes: vec![Attribute {
                name: "total_asset_value".into(),
                ty: AttrType::Number,
                source: "user_asset_summary".into(),
                sensitive: false,
            }],
        }
    }

    #[tokio::test]
    async fn an_attribute_dropped_and_declared_again_keeps_its_sensitivity() {
        let mut kind = SubjectKind::default();
        let mut sensitive = draft();
        sensitive.attributes[0].sensitive = true;
        let e = kind.handle(("user".into(), sensitive), &()).await.unwrap();
        kind.apply(e[0].clone());
        let mut dropped = draft();
        dropped.attributes.clear();
        let e = kind.handle(("user".into(), dropped), &()).await.unwrap();
        kind.apply(e[0].clone());
        assert_eq!(kind.ever_sensitive(), ["total_asset_value"]);
        let err = kind
            .handle(("user".into(), draft()), &())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            invalid(
                "attributes/0/sensitive",
                "whether an attribute is sensitive cannot change once declared"
            )
        );
    }

    #[tokio::test]
    async fn whether_an_attribute_is_sensitive_cannot_change() {
        let mut kind = SubjectKind::default();
        let e = kind.handle(("user".into(), draft()), &()).await.unwrap();
        kind.apply(e[0].clone());
        let mut changed = draft();
        changed.attributes[0].sensitive = true;
        let err = kind
            .handle(("user".into(), changed), &())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            invalid(
                "attributes/0/sensitive",
                "whether an attribute is sensitive cannot change once declared"
            )
        );
    }

    #[tokio::test]
    async fn a_kind_is_declared_then_unchanged_redeclarations_emit_nothing() {
        let mut kind = SubjectKind::default();
        let events = kind.handle(("user".into(), draft()), &()).await.unwrap();
        assert_eq!(events.len(), 1);
        kind.apply(events[0].clone());
        assert!(kind
            .handle(("user".into(), draft()), &())
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn an_attribute_type_cannot_change() {
        let mut kind = SubjectKind::default();
        let e = kind.handle(("user".into(), draft()), &()).await.unwrap();
        kind.apply(e[0].clone());
        let mut changed = draft();
        changed.attributes[0].ty = AttrType::String;
        let err = kind
            .handle(("user".into(), changed), &())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            invalid(
                "attributes/0/type",
                "an attribute's type cannot change once declared"
            )
        );
    }

    #[tokio::test]
    async fn bad_names_are_refused_with_their_field() {
        let kind = SubjectKind::default();
        let mut d = draft();
        d.attributes[0].name = "Total Asset".into();
        let err = kind.handle(("user".into(), d), &()).await.unwrap_err();
        assert!(matches!(err, TaggingError::Invalid { field, .. } if field == "attributes/0/name"));
        let err = kind
            .handle(("User".into(), draft()), &())
            .await
            .unwrap_err();
        assert!(matches!(err, TaggingError::Invalid { field, .. } if field == "kind"));
    }
}
