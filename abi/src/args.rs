//! Which command each argument struct belongs to: `impl EvtchnArg for EvtchnSend` says
//! that `EVTCHNOP_send` takes an `evtchn_send_t`, so that a caller passes the struct and
//! the command follows from its type (no command paired with the wrong struct).
//!
//! Only the structs that are a command's whole argument are listed; commands that take
//! none (`VCPUOP_up`, `VCPUOP_is_up`, ...), raw buffers, or a struct shared by several
//! commands (`vcpu_register_runstate_memory_area`) are not. Whether a call is
//! safe to make from safe Rust (no guest address inside, no change to the caller's memory
//! beyond the struct) is the guest runtime's judgement, not this crate's.

use crate::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindPirq, EvtchnBindVcpu, EvtchnBindVirq,
    EvtchnClose, EvtchnInitControl, EvtchnReset, EvtchnSend, EvtchnStatus, EvtchnUnmask,
};
use crate::hypercall::{EvtchnOp, VcpuOp, XenVersionOp};
use crate::vcpu::{
    VcpuGetPhysid, VcpuRegisterVcpuInfo, VcpuRunstateInfo, VcpuSetPeriodicTimer,
    VcpuSetSingleshotTimer,
};
use crate::version::{XenCompileInfo, XenFeatureInfo, XenPlatformParameters};

/// The `event_channel_op` command that takes `Self` as its argument.
pub trait EvtchnArg {
    const OP: EvtchnOp;
}

/// The `vcpu_op` command that takes `Self` as its argument.
pub trait VcpuArg {
    const OP: VcpuOp;
}

/// The `xen_version` command that fills `Self`.
pub trait XenVersionArg {
    const OP: XenVersionOp;
}

macro_rules! args {
    ($trait:ident, $op:ident: $($ty:ident => $cmd:ident),* $(,)?) => {
        $(impl $trait for $ty {
            const OP: $op = $op::$cmd;
        })*
    };
}

args!(EvtchnArg, EvtchnOp:
    EvtchnBindInterdomain => BindInterdomain,
    EvtchnBindVirq => BindVirq,
    EvtchnBindPirq => BindPirq,
    EvtchnClose => Close,
    EvtchnSend => Send,
    EvtchnStatus => Status,
    EvtchnAllocUnbound => AllocUnbound,
    EvtchnBindIpi => BindIpi,
    EvtchnBindVcpu => BindVcpu,
    EvtchnUnmask => Unmask,
    EvtchnReset => Reset,
    EvtchnInitControl => InitControl,
);

args!(VcpuArg, VcpuOp:
    VcpuRunstateInfo => GetRunstateInfo,
    VcpuSetPeriodicTimer => SetPeriodicTimer,
    VcpuSetSingleshotTimer => SetSingleshotTimer,
    VcpuRegisterVcpuInfo => RegisterVcpuInfo,
    VcpuGetPhysid => GetPhysid,
);

args!(XenVersionArg, XenVersionOp:
    XenCompileInfo => CompileInfo,
    XenPlatformParameters => PlatformParameters,
    XenFeatureInfo => GetFeatures,
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the headers give (event_channel.h, vcpu.h, version.h), so that a
    /// mistyped command in the table above is caught.
    #[test]
    fn each_struct_names_its_headers_command() {
        assert_eq!(EvtchnSend::OP.raw(), 4);
        assert_eq!(EvtchnAllocUnbound::OP.raw(), 6);
        assert_eq!(EvtchnBindVcpu::OP.raw(), 8);
        assert_eq!(EvtchnInitControl::OP.raw(), 11);
        assert_eq!(VcpuRunstateInfo::OP.raw(), 4);
        assert_eq!(VcpuSetSingleshotTimer::OP.raw(), 8);
        assert_eq!(VcpuRegisterVcpuInfo::OP.raw(), 10);
        assert_eq!(VcpuGetPhysid::OP.raw(), 12);
        assert_eq!(XenFeatureInfo::OP.raw(), 6);
        assert_eq!(XenPlatformParameters::OP.raw(), 5);
    }
}
