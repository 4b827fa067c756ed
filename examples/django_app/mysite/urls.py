from django.urls import path
from shop import views

urlpatterns = [
    path("orders/", views.place_order),
    path("quote/", views.quote),
    path("tasks/<str:task_id>/", views.task_status),
]
