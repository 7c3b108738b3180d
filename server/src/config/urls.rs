//! URL lists as etcd's flags take them.

use std::collections::BTreeMap;

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    pub scheme: Scheme,
    /// `host:port`, as given.
    pub address: String,
    pub original: String,
}

fn split_url(url: &str) -> Option<(Scheme, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let address = rest.trim_end_matches('/');
    let (host, port) = address.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() || address.contains('/') {
        return None;
    }
    Some((scheme, address))
}

pub fn check_urls(flag: &str, urls: &[String]) -> Result<(), ConfigError> {
    for url in urls {
        if split_url(url).is_none() {
            return Err(ConfigError::Invalid(format!(
                "invalid value {url:?} for flag -{flag}: URL must be scheme://host:port with scheme http or https"
            )));
        }
    }
    Ok(())
}

pub fn parse_listen_urls(flag: &str, urls: &[String]) -> Result<Vec<ListenUrl>, ConfigError> {
    check_urls(flag, urls)?;
    let mut out: Vec<ListenUrl> = Vec::new();
    for url in urls {
        if let Some((scheme, address)) = split_url(url) {
            if !out.iter().any(|u| u.original == *url) {
                out.push(ListenUrl {
                    scheme,
                    address: address.to_string(),
                    original: url.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// `name1=url1,name1=url2,name2=url3` -> {name1: [url1, url2], name2: [url3]}.
pub fn parse_initial_cluster(raw: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, url)) = item.split_once('=') else {
            return Err(ConfigError::Invalid(format!(
                "invalid value {raw:?} for flag -initial-cluster: {item:?} is not name=URL"
            )));
        };
        check_urls("initial-cluster", &[url.to_string()])?;
        members
            .entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    Ok(members)
}
