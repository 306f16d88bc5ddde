//! The SPIRE plugin SDK's `Config` service (Configure, Validate) for either plugin.

use std::sync::{Arc, RwLock};

use tonic::{Request, Response, Status};

use crate::Error;
use crate::proto::config::config_server::Config;
use crate::proto::config::{
    ConfigureRequest, ConfigureResponse, CoreConfiguration, ValidateRequest, ValidateResponse,
};

/// A plugin's configuration, parsed from `plugin_data` (HCL) and SPIRE's core settings.
pub trait PluginConfig: Sized + Send + Sync + 'static {
    /// Parses and checks `hcl`; `trust_domain` is the one SPIRE runs in.
    fn parse(hcl: &str, trust_domain: &str) -> Result<Self, Error>;
}

/// The configuration in force, shared by the plugin's services; empty until the first
/// successful Configure. A failed Configure keeps the previous one.
pub struct Configured<C>(Arc<RwLock<Option<Arc<C>>>>);

impl<C> Clone for Configured<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C> Default for Configured<C> {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }
}

impl<C> Configured<C> {
    /// The configuration in force, or `FailedPrecondition` before the first Configure.
    #[allow(
        clippy::result_large_err,
        reason = "tonic's Status is the service error type"
    )]
    pub fn get(&self) -> Result<Arc<C>, Status> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| Status::failed_precondition("the plugin is not configured yet"))
    }

    fn set(&self, config: C) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(config));
    }
}

/// The `Config` service over a [`Configured`] slot.
pub struct ConfigService<C> {
    slot: Configured<C>,
}

impl<C> ConfigService<C> {
    /// A service that configures `slot`.
    pub fn new(slot: Configured<C>) -> Self {
        Self { slot }
    }
}

fn parse<C: PluginConfig>(core: Option<&CoreConfiguration>, hcl: &str) -> Result<C, Error> {
    let trust_domain = core.map(|c| c.trust_domain.as_str()).unwrap_or_default();
    if trust_domain.is_empty() {
        return Err(Error::Config {
            key: "core_configuration.trust_domain".into(),
            value: String::new(),
            accepted: "SPIRE always sends its trust domain; got none".into(),
        });
    }
    C::parse(hcl, trust_domain)
}

#[tonic::async_trait]
impl<C: PluginConfig> Config for ConfigService<C> {
    async fn configure(
        &self,
        request: Request<ConfigureRequest>,
    ) -> Result<Response<ConfigureResponse>, Status> {
        let request = request.into_inner();
        let config = parse::<C>(
            request.core_configuration.as_ref(),
            &request.hcl_configuration,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.slot.set(config);
        tracing::info!("configured");
        Ok(Response::new(ConfigureResponse {}))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let request = request.into_inner();
        let result = parse::<C>(
            request.core_configuration.as_ref(),
            &request.hcl_configuration,
        );
        Ok(Response::new(ValidateResponse {
            valid: result.is_ok(),
            notes: result.err().map(|e| e.to_string()).into_iter().collect(),
        }))
    }
}

/// Reads a file named by setting `key`.
pub(crate) fn read(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Parses `plugin_data`.
pub(crate) fn from_hcl<T: serde::de::DeserializeOwned>(hcl: &str) -> Result<T, Error> {
    hcl::from_str(hcl).map_err(|e| Error::Hcl(e.to_string()))
}

/// A PCR name of a `plugin_data` map: `pcr0` … `pcr15`.
pub(crate) fn pcr_index(key: &str, name: &str) -> Result<u8, Error> {
    name.strip_prefix("pcr")
        .and_then(|i| i.parse::<u8>().ok())
        .filter(|i| *i < 16 && name == format!("pcr{i}"))
        .ok_or_else(|| Error::Config {
            key: format!("{key}.{name}"),
            value: name.into(),
            accepted: "PCR names pcr0 to pcr15".into(),
        })
}

/// A PCR value: 96 hex digits (SHA-384).
pub(crate) fn pcr_value(key: &str, value: &str) -> Result<Vec<u8>, Error> {
    enclaveid_attestor::parse_pcr(value).ok_or_else(|| Error::Config {
        key: key.into(),
        value: value.into(),
        accepted: "96 hex digits (a SHA-384 PCR value)".into(),
    })
}
