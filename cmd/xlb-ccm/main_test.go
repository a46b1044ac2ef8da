package main

import (
	"regexp"
	"testing"

	"k8s.io/cloud-provider/app"
	"k8s.io/cloud-provider/names"
)

// The framework requires controller names of this shape (its own consistency test).
var controllerNameRE = regexp.MustCompile(`^[a-z]([-a-z]*[a-z])?$`)

func TestControllerRegistration(t *testing.T) {
	m := controllerInitializers()
	for _, want := range []string{ClassControllerName, names.ServiceLBController, names.CloudNodeController, names.CloudNodeLifecycleController} {
		if _, ok := m[want]; !ok {
			t.Errorf("controller %q not registered", want)
		}
	}
	for name := range m {
		if !controllerNameRE.MatchString(name) {
			t.Errorf("controller name %q is not accepted by the framework", name)
		}
	}
	if !controllerNameRE.MatchString(ClassControllerAlias) {
		t.Errorf("alias %q is not a valid controller name", ClassControllerAlias)
	}
	// The framework's map must not have been modified (it is shared package state).
	if _, ok := app.DefaultInitFuncConstructors[ClassControllerName]; ok {
		t.Errorf("controllerInitializers modified app.DefaultInitFuncConstructors")
	}
}
