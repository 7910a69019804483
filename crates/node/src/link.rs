//! The local interface holding the listen addresses, managed over rtnetlink.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec};

use crate::NodeError;
use crate::spec::{InterfaceKind, InterfaceName};

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const EOPNOTSUPP: i32 = nix::errno::Errno::EOPNOTSUPP as i32;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The interface named in the spec, e.g. `nodelocaldns`.
pub(crate) struct LocalInterface<'a> {
    pub name: &'a InterfaceName,
    pub kind: InterfaceKind,
}

impl LocalInterface<'_> {
    fn err(&self, operation: &'static str) -> impl FnOnce(rtnetlink::Error) -> NodeError + '_ {
        move |source| NodeError::Interface {
            interface: self.name.as_str().to_owned(),
            operation,
            source: Box::new(source),
        }
    }

    /// The interface index, or `None` if no link has this name.
    pub async fn index(&self, handle: &Handle) -> Result<Option<u32>, NodeError> {
        let found = handle.link().get().match_name(self.name.as_str()).execute().try_next().await;
        match found {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(self.err("look up")(e)),
        }
    }

    /// Creates the link if missing and sets it up. Returns (index, whether it was created).
    /// An existing link of that name is adopted whatever its kind: the name is reserved for
    /// nodedns by configuration.
    pub async fn ensure_up(&self, handle: &Handle) -> Result<(u32, bool), NodeError> {
        let mut created = false;
        let index = match self.index(handle).await? {
            Some(index) => index,
            None => {
                let name = self.name.as_str();
                let message = match self.kind {
                    InterfaceKind::Dummy => LinkDummy::new(name).build(),
                    InterfaceKind::Bridge => LinkBridge::new(name).build(),
                };
                match handle.link().add(message).execute().await {
                    Ok(()) => created = true,
                    // Lost a race with another instance (rolling update): adopt it.
                    Err(e) if errno(&e) == Some(EEXIST) => {}
                    // The kernel answers EOPNOTSUPP for a link kind it does not know
                    // (e.g. CONFIG_DUMMY unset and no module).
                    Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
                        return Err(NodeError::UnsupportedKind { interface: name.to_owned(), kind: self.kind.name() });
                    }
                    Err(e) => return Err(self.err("create")(e)),
                }
                self.index(handle)
                    .await?
                    .ok_or_else(|| self.err("look up after create")(rtnetlink::Error::RequestFailed))?
            }
        };
        // Up, although a port-less bridge/dummy never gets carrier: addresses on a down link
        // get no local routes, so the kernel would not deliver to them.
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(self.err("set up"))?;
        Ok((index, created))
    }

    /// Adds each address as a host address (/32, /128) unless present. Returns how many
    /// were added.
    pub async fn ensure_addresses(
        &self,
        handle: &Handle,
        index: u32,
        addresses: &[IpAddr],
    ) -> Result<usize, NodeError> {
        let addr_err = |address: IpAddr, operation: &'static str| {
            let interface = self.name.as_str().to_owned();
            move |source| NodeError::Address { interface, address, operation, source: Box::new(source) }
        };
        let mut present: Vec<(IpAddr, u8)> = Vec::new();
        let mut stream = handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = stream.try_next().await.map_err(addr_err(addresses[0], "list"))? {
            // The kernel filter may be ignored without strict checking; filter here too.
            if msg.header.index != index {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(a) = attr {
                    present.push((*a, msg.header.prefix_len));
                }
            }
        }
        let mut added = 0;
        for &address in addresses {
            let prefix = if address.is_ipv4() { 32 } else { 128 };
            if present.contains(&(address, prefix)) {
                continue;
            }
            let mut req = handle.address().add(index, address, prefix);
            if address.is_ipv6() {
                // IFA_F_NODAD: without it the address is "tentative" for ~1 s of duplicate
                // address detection and bind() fails with EADDRNOTAVAIL (no FREEBIND) or
                // queries go unanswered right after (re)start.
                let m = req.message_mut();
                m.header.flags = AddressHeaderFlags::Nodad;
                m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            match req.execute().await {
                Ok(()) => added += 1,
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(addr_err(address, "add")(e)),
            }
        }
        Ok(added)
    }

    /// Deletes the link (and with it its addresses), if it exists.
    pub async fn delete(&self, handle: &Handle) -> Result<(), NodeError> {
        let Some(index) = self.index(handle).await? else {
            return Ok(());
        };
        match handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(self.err("delete")(e)),
        }
    }
}
