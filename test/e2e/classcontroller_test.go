package e2e

import (
	"testing"
	"time"

	"github.com/xlb-dev/xlb/provider/classcontroller"
)

// TestCCMLoadBalancerClass runs xlb-ccm in loadBalancerClass mode (cloud-config
// loadBalancerClass: xlb.dev/xlb) with both the upstream service controller and xlb's class
// controller requested: xlb serves exactly the Services of its class, through the class
// controller, and leaves classless Services alone (the upstream service controller is not
// started in this mode).
func TestCCMLoadBalancerClass(t *testing.T) {
	class := classcontroller.DefaultClass
	e := newCCMEnv(t, ccmOptions{Class: class})
	const controllers = "service,service-lb-class"
	e.startCCM(controllers)
	e.waitHealthy()

	// A classless Service, created first: it must never get a status or a finalizer.
	plain := e.createService("plain", nil, nil)

	lifecycle(t, e, &class, controllers)

	s, err := e.getService("plain")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Status.LoadBalancer.Ingress) != 0 || len(s.Finalizers) != 0 {
		t.Errorf("classless Service touched in class mode: status %+v finalizers %v", s.Status.LoadBalancer, s.Finalizers)
	}
	if ss := e.dataplaneServices(string(plain.UID)); len(ss) != 0 {
		t.Errorf("classless Service programmed in class mode: %+v", ss)
	}
	// And the log says why the upstream controller stayed off.
	e.eventually("log explains the upstream service controller is off", 5*time.Second, func() error {
		return logContains(e, "Not starting the upstream service controller")
	})
}
