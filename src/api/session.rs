//! `flowgate.session.v2.SessionService` (also answering the v2beta paths): create, check, read, list and
//! terminate sessions.

use std::collections::BTreeMap;

use chrono::TimeDelta;
use flowgate_core::identity::model::UserId;
use flowgate_core::session::{
    ChallengeRequest, Challenges, Checks, Factors, OtpDelivery, Session, SessionChange, SessionFilter, SessionId,
    Sessions, TimestampMethod, UserAgent, UserCheck, UserFactor,
};
use tonic::{Request, Response, Status};

use super::convert::{details, from_timestamp, invalid, list_details, list_query, timestamp};
use super::request_id;
use crate::auth::context;
use crate::error::to_status;
use crate::pb::flowgate::object::v2 as object;
use crate::pb::flowgate::session::v2 as pb;

/// Adapter of the session service over the session use cases.
pub struct SessionApi {
    sessions: Sessions,
}

impl SessionApi {
    /// An adapter over `sessions`.
    pub fn new(sessions: Sessions) -> Self {
        Self { sessions }
    }
}

fn checks(c: Option<pb::Checks>, prefix: &str) -> Result<Checks, Status> {
    let Some(pb::Checks { user, password, web_auth_n, idp_intent, totp, otp_sms, otp_email }) = c else {
        return Ok(Checks::default());
    };
    if web_auth_n.is_some() {
        return Err(Status::unimplemented(format!("{prefix}.web_auth_n: WebAuthN checks are not supported yet")));
    }
    let user = match user.and_then(|u| u.search) {
        None => None,
        Some(pb::check_user::Search::UserId(id)) => Some(UserCheck::Id(UserId::from(id))),
        Some(pb::check_user::Search::LoginName(name)) => Some(UserCheck::LoginName(name)),
    };
    Ok(Checks {
        user,
        password: password.map(|p| p.password),
        idp_intent: idp_intent.map(|i| (i.idp_intent_id, i.idp_intent_token)),
        totp: totp.map(|t| t.code),
        otp_sms: otp_sms.map(|o| o.code),
        otp_email: otp_email.map(|o| o.code),
    })
}

fn challenge_request(c: Option<pb::RequestChallenges>, prefix: &str) -> Result<ChallengeRequest, Status> {
    let Some(pb::RequestChallenges { web_auth_n, otp_sms, otp_email }) = c else {
        return Ok(ChallengeRequest::default());
    };
    if web_auth_n.is_some() {
        return Err(Status::unimplemented(format!("{prefix}.web_auth_n: WebAuthN challenges are not supported yet")));
    }
    Ok(ChallengeRequest {
        otp_sms: otp_sms
            .map(|o| if o.return_code { OtpDelivery::Return } else { OtpDelivery::Send { url_template: None } }),
        otp_email: otp_email.map(|o| match o.delivery_type {
            Some(pb::request_challenges::otp_email::DeliveryType::ReturnCode(_)) => OtpDelivery::Return,
            Some(pb::request_challenges::otp_email::DeliveryType::SendCode(s)) => {
                OtpDelivery::Send { url_template: s.url_template }
            }
            None => OtpDelivery::Send { url_template: None },
        }),
    })
}

fn lifetime(d: Option<pbjson_types::Duration>) -> Option<TimeDelta> {
    d.map(|d| TimeDelta::seconds(d.seconds) + TimeDelta::nanoseconds(i64::from(d.nanos)))
}

fn challenges_to_pb(c: Challenges) -> Option<pb::Challenges> {
    let Challenges { otp_sms, otp_email } = c;
    (otp_sms.is_some() || otp_email.is_some()).then_some(pb::Challenges { web_auth_n: None, otp_sms, otp_email })
}

fn user_agent(u: Option<pb::UserAgent>) -> Option<UserAgent> {
    let pb::UserAgent { fingerprint_id, ip, description, header } = u?;
    Some(UserAgent {
        fingerprint_id,
        ip,
        description,
        headers: header.into_iter().map(|(k, v)| (k, v.values)).collect(),
    })
}

/// The wire form of a session; no factors at all until the user is checked.
fn session_to_pb(s: Session) -> pb::Session {
    let Session { id, creator: _, user_agent, factors, metadata, expiration, terminated: _, details: d } = s;
    let Factors { user, password, totp, otp_sms, otp_email, intent } = factors;
    let factors = user.map(|u| {
        let UserFactor { verified_at, id, login_name, display_name, organization_id } = u;
        let at = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(timestamp);
        pb::Factors {
            user: Some(pb::UserFactor {
                verified_at: Some(timestamp(verified_at)),
                id: id.into_string(),
                login_name,
                display_name,
                organization_id: organization_id.into_string(),
            }),
            password: at(password).map(|t| pb::PasswordFactor { verified_at: Some(t) }),
            web_auth_n: None,
            intent: at(intent).map(|t| pb::IntentFactor { verified_at: Some(t) }),
            totp: at(totp).map(|t| pb::TotpFactor { verified_at: Some(t) }),
            otp_sms: at(otp_sms).map(|t| pb::OtpFactor { verified_at: Some(t) }),
            otp_email: at(otp_email).map(|t| pb::OtpFactor { verified_at: Some(t) }),
        }
    });
    pb::Session {
        id: id.into_string(),
        creation_date: Some(timestamp(d.creation_date)),
        change_date: Some(timestamp(d.change_date)),
        sequence: d.sequence,
        factors,
        metadata: metadata.into_iter().collect(),
        user_agent: user_agent_to_pb(user_agent),
        expiration_date: expiration.map(timestamp),
    }
}

fn user_agent_to_pb(u: Option<UserAgent>) -> Option<pb::UserAgent> {
    let UserAgent { fingerprint_id, ip, description, headers } = u?;
    Some(pb::UserAgent {
        fingerprint_id,
        ip,
        description,
        header: headers.into_iter().map(|(k, values)| (k, pb::user_agent::HeaderValues { values })).collect(),
    })
}

fn timestamp_method(value: i32, field: &str, rid: Option<&str>) -> Result<TimestampMethod, Status> {
    match object::TimestampQueryMethod::try_from(value) {
        Ok(object::TimestampQueryMethod::Equals) => Ok(TimestampMethod::Equals),
        Ok(object::TimestampQueryMethod::Greater) => Ok(TimestampMethod::Greater),
        Ok(object::TimestampQueryMethod::GreaterOrEquals) => Ok(TimestampMethod::GreaterOrEquals),
        Ok(object::TimestampQueryMethod::Less) => Ok(TimestampMethod::Less),
        Ok(object::TimestampQueryMethod::LessOrEquals) => Ok(TimestampMethod::LessOrEquals),
        Err(_) => Err(invalid(field, "is not a known timestamp query method", rid)),
    }
}

fn session_filter(q: pb::SearchQuery, i: usize, rid: Option<&str>) -> Result<SessionFilter, Status> {
    use pb::search_query::Query;
    let field = |name: &str| format!("queries[{i}].{name}");
    Ok(match q.query.ok_or_else(|| invalid(&format!("queries[{i}]"), "names no query", rid))? {
        Query::IdsQuery(pb::IDsQuery { ids }) => SessionFilter::Ids(ids.into_iter().map(SessionId::from).collect()),
        Query::UserIdQuery(pb::UserIdQuery { id }) => SessionFilter::UserId(UserId::from(id)),
        Query::CreationDateQuery(pb::CreationDateQuery { creation_date, method }) => {
            let at = creation_date
                .ok_or_else(|| invalid(&field("creation_date_query.creation_date"), "is required", rid))?;
            SessionFilter::CreationDate(
                from_timestamp(&at, &field("creation_date_query.creation_date"), rid)?,
                timestamp_method(method, &field("creation_date_query.method"), rid)?,
            )
        }
        Query::CreatorQuery(pb::CreatorQuery { id }) => SessionFilter::Creator(id.filter(|s| !s.is_empty())),
        Query::UserAgentQuery(pb::UserAgentQuery { fingerprint_id }) => {
            SessionFilter::UserAgentFingerprint(fingerprint_id.filter(|s| !s.is_empty()))
        }
        Query::ExpirationDateQuery(pb::ExpirationDateQuery { expiration_date, method }) => {
            let at = expiration_date
                .ok_or_else(|| invalid(&field("expiration_date_query.expiration_date"), "is required", rid))?;
            SessionFilter::ExpirationDate(
                from_timestamp(&at, &field("expiration_date_query.expiration_date"), rid)?,
                timestamp_method(method, &field("expiration_date_query.method"), rid)?,
            )
        }
    })
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for SessionApi {
    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::ListSessionsRequest { query, queries, sorting_column } = req.into_inner();
        if pb::SessionFieldName::try_from(sorting_column).is_err() {
            return Err(invalid("sorting_column", "is not a known field", rid));
        }
        let filters =
            queries.into_iter().enumerate().map(|(i, q)| session_filter(q, i, rid)).collect::<Result<Vec<_>, _>>()?;
        let q = list_query(query);
        let asc = q.asc;
        let page = self.sessions.list(&ctx, filters, q, asc).await.map_err(|e| to_status(&e, rid))?;
        let details = list_details(&page);
        Ok(Response::new(pb::ListSessionsResponse {
            details: Some(details),
            sessions: page.items.into_iter().map(session_to_pb).collect(),
        }))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::GetSessionRequest { session_id, session_token } = req.into_inner();
        let session = self
            .sessions
            .get(&ctx, &SessionId::from(session_id), session_token.as_deref())
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::GetSessionResponse { session: Some(session_to_pb(session)) }))
    }

    async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::CreateSessionRequest { checks: c, metadata, challenges, user_agent: ua, lifetime: lt } =
            req.into_inner();
        let change = SessionChange {
            checks: checks(c, "checks")?,
            metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
            challenges: challenge_request(challenges, "challenges")?,
            lifetime: lifetime(lt),
        };
        let (session, token, challenges) =
            self.sessions.create(&ctx, change, user_agent(ua)).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::CreateSessionResponse {
            details: Some(details(&session.details)),
            session_id: session.id.into_string(),
            session_token: token,
            challenges: challenges_to_pb(challenges),
        }))
    }

    async fn set_session(
        &self,
        req: Request<pb::SetSessionRequest>,
    ) -> Result<Response<pb::SetSessionResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        // `session_token` is deprecated and ignored, as in ZITADEL: the caller's permission decides.
        #[allow(deprecated)]
        let pb::SetSessionRequest { session_id, session_token: _, checks: c, metadata, challenges, lifetime: lt } =
            req.into_inner();
        let change = SessionChange {
            checks: checks(c, "checks")?,
            metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
            challenges: challenge_request(challenges, "challenges")?,
            lifetime: lifetime(lt),
        };
        let (session, token, challenges) =
            self.sessions.set(&ctx, &SessionId::from(session_id), change).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::SetSessionResponse {
            details: Some(details(&session.details)),
            session_token: token,
            challenges: challenges_to_pb(challenges),
        }))
    }

    async fn delete_session(
        &self,
        req: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::DeleteSessionRequest { session_id, session_token } = req.into_inner();
        let d = self
            .sessions
            .delete(&ctx, &SessionId::from(session_id), session_token.as_deref())
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::DeleteSessionResponse { details: Some(details(&d)) }))
    }
}
