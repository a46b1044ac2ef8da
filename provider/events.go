package provider

// Event reasons written on Services (in addition to the upstream service
// controller's EnsuringLoadBalancer/EnsuredLoadBalancer/... events).
const (
	ReasonIPAllocated          = "IPAllocated"
	ReasonAllocationFailed     = "AllocationFailed"
	ReasonInvalidConfiguration = "InvalidConfiguration"
	ReasonProgrammed           = "DataplanesProgrammed"
	ReasonProgrammingFailed    = "DataplaneProgrammingFailed"
	ReasonDeleteFailed         = "DataplaneDeleteFailed"
	ReasonRebuildConflict      = "IPRebuildConflict"
)
