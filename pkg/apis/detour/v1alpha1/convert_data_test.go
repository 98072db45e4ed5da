package v1alpha1

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// TestDataRoundTrip: every field of a data entry and of its status
// survives the trip through the gRPC API and back.
func TestDataRoundTrip(t *testing.T) {
	class, size := "fast", resource.MustParse("2Gi")
	in := &Environment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "pr-42"},
		Spec: EnvironmentSpec{
			Forks: []Fork{{Workload: WorkloadRef{Kind: WorkloadDeployment, Name: "api"}}},
			Data: []DataSource{
				{Name: "orders-db", Kind: DataPostgresBranch, PostgresBranch: &PostgresBranch{
					Workload:    WorkloadRef{Kind: WorkloadStatefulSet, Name: "postgres"},
					Container:   "db",
					Service:     "postgres",
					Port:        5433,
					Database:    "orders",
					Credentials: PostgresCredentials{Secret: "pg", UserKey: "user", PasswordKey: "pw", DatabaseKey: "db"},
					Mode:        BranchFiltered,
					Filters:     []RowFilter{{Table: "public.orders", Where: "created_at > now() - interval '7 days'"}},
					Anonymize:   &SQLScript{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "anon"}, Key: "anon.sql"}},
					Env:         []ConnectionEnv{{Name: "DATABASE_URL", Part: ConnectionURL}, {Name: "PGHOST", Part: ConnectionHost}},
					Forks:       []string{"api"},
					Storage:     &BranchStorage{Type: StoragePVC, StorageClassName: &class, Size: &size},
				}},
				{Name: "seed", Kind: DataJobKind, Job: &DataJob{
					Image: "reg/seed:1", Command: []string{"/seed"}, Args: []string{"--fast"},
					Env: []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "B", ValueFrom: &corev1.EnvVarSource{
						SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "k"},
					}}},
					Timeout: &metav1.Duration{Duration: 5 * time.Minute},
				}},
			},
		},
		Status: EnvironmentStatus{Data: []DataStatus{{
			Name: "orders-db", Kind: DataPostgresBranch, Phase: DataReady, Rows: 12, Bytes: 8 << 20,
			Duration: &metav1.Duration{Duration: 3 * time.Second}, Endpoint: "orders-db-pr-42:5432",
			Secret: "orders-db-pr-42", Job: "orders-db-pr-42-restore", Message: "restored",
		}}},
	}
	out, err := EnvironmentFromProto(EnvironmentToProto(in))
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(in.Spec.Data, out.Spec.Data) {
		t.Errorf("spec.data changed:\n in %+v\nout %+v", in.Spec.Data, out.Spec.Data)
	}
	if !equality.Semantic.DeepEqual(in.Status.Data, out.Status.Data) {
		t.Errorf("status.data changed:\n in %+v\nout %+v", in.Status.Data, out.Status.Data)
	}

	bad := EnvironmentToProto(in)
	bad.Spec.Data[0].PostgresBranch.Storage.Size = "lots"
	if _, err := EnvironmentFromProto(bad); err == nil || !strings.Contains(err.Error(), `storage size "lots"`) {
		t.Errorf("a size that is no quantity: %v", err)
	}
	bad = EnvironmentToProto(in)
	bad.Spec.Data[1].Job.Env[1].ValueFrom = &detourv1.EnvValueSource{}
	if _, err := EnvironmentFromProto(bad); err == nil || !strings.Contains(err.Error(), "value_from must name exactly one") {
		t.Errorf("a value source naming nothing: %v", err)
	}
}
